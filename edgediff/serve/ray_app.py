"""`edgediff serve --ray`: the same app as a Ray Serve application.

Two deployments: `Ingress` runs the HTTP app (no model, no GPU) and forwards each request to
`PipelineReplica`, one pipeline per replica (per GPU where there are GPUs), which Ray batches
(`serve.batch`), places and, with --autoscale, scales with the load. Admission control (429),
metrics and the request dialects stay in the ingress, so they count every replica's work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from ray import serve

from edgediff.runtime.request import GenerationRequest
from edgediff.serve.batches import BatchRunner, Outcome
from edgediff.serve.settings import (
    Limits,
    ModelChoice,
    RayPlan,
    default_gpus_per_replica,
    parse_autoscale,
)

_log = logging.getLogger(__name__)

APP_NAME = "edgediff"


class PipelineReplica:
    """One pipeline; Ray hands it the requests that arrived together as one list."""

    def __init__(self, model: ModelChoice, limits: Limits):
        self.runner: BatchRunner = model.load()
        self.generate.set_max_batch_size(limits.max_batch)
        self.generate.set_batch_wait_timeout_s(limits.batch_wait_ms / 1000)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def generate(self, requests: list[GenerationRequest]) -> list[Outcome]:
        """Outcomes of requests Ray batched, off the event loop (ONNX Runtime frees the GIL)."""
        return await asyncio.to_thread(self.runner.run, requests)

    def info(self) -> dict[str, Any]:
        """What this replica serves."""
        return self.runner.info()

    def __del__(self) -> None:
        # Ray calls __del__ when it stops a replica: release the sessions (and GPU memory).
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()


class RayService:
    """The ImageService the ingress's app runs on: calls into the replicas."""

    def __init__(self, replicas: Any, count: int | str):
        self.replicas = replicas
        self.count = count

    async def start(self) -> None:
        """Nothing to start: Ray runs the replicas."""

    async def generate(self, request: GenerationRequest) -> Outcome:
        """A replica's outcome for the request."""
        return await self.replicas.generate.remote(request)

    async def info(self) -> dict[str, Any]:
        """One replica's description, and how many there are."""
        return {"replicas": self.count, **(await self.replicas.info.remote())}

    async def close(self) -> None:
        """Nothing to close: Ray stops the replicas."""


@serve.ingress()
class Ingress:
    """The HTTP app, with the replicas behind it."""

    def __init__(self, replicas: Any, limits: Limits, count: int | str):
        self.service = RayService(replicas, count)
        self.limits = limits

    def __serve_build_asgi_app__(self) -> Any:
        from edgediff.serve.app import create_app

        return create_app(self.service, self.limits)


def application(model: ModelChoice, plan: RayPlan, limits: Limits) -> serve.Application:
    """The Ray Serve application: the ingress bound to the pipeline replicas."""
    actor = {"num_cpus": plan.cpus_per_replica, "num_gpus": plan.gpus_per_replica}
    if plan.gpus_per_replica == 0 and model.backend == "ort-cpu":
        # One replica per CPU share: its ONNX Runtime must not spread over the others' cores.
        model = dataclasses.replace(model, threads=max(1, int(plan.cpus_per_replica)))
    scaling: dict[str, Any] = {"num_replicas": plan.replicas}
    count: int | str = plan.replicas
    if plan.autoscale is not None:
        low, high = plan.autoscale
        scaling = {
            "autoscaling_config": {
                "min_replicas": low,
                "max_replicas": high,
                # A replica is busy enough when it has a full batch in hand.
                "target_ongoing_requests": limits.max_batch,
            }
        }
        count = f"{low}:{high} (autoscaled)"
    replicas = serve.deployment(PipelineReplica).options(
        name="PipelineReplica",
        ray_actor_options=actor,
        # Enough in hand to fill a batch while the previous one runs.
        max_ongoing_requests=2 * limits.max_batch,
        **scaling,
    )
    ingress = serve.deployment(Ingress).options(
        name="Ingress",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        # Requests must reach the app to be counted, queued and refused with 429 there.
        max_ongoing_requests=limits.max_queue + limits.max_batch,
    )
    return ingress.bind(replicas.bind(model, limits), limits, count)


# What `serve run edgediff.serve.ray_app:app_builder KEY=VALUE ...` and a RayService's
# serveConfigV2 `args` may set, with the `edgediff serve` flag each one mirrors.
BUILDER_ARGS = (
    "bundle", "backend", "precision", "decoder", "max_size", "max_batch", "max_queue",
    "batch_wait_ms", "replicas", "autoscale", "gpus_per_replica", "cpus_per_replica",
)  # fmt: skip


def settings_from_args(args: dict[str, Any]) -> tuple[ModelChoice, RayPlan, Limits]:
    """An app builder's arguments (strings from `serve run`, or YAML values) as settings;
    an unknown key or a bad value is a one-line error."""
    from edgediff.errors import InputError

    unknown = sorted(set(args) - set(BUILDER_ARGS))
    if unknown:
        raise InputError(f"unknown argument '{unknown[0]}'", f"Use: {', '.join(BUILDER_ARGS)}")

    def number(key: str, kind: type, default: Any) -> Any:
        value = args.get(key, default)
        try:
            value = None if value is None else kind(value)
        except (TypeError, ValueError):
            raise InputError(f"{key} must be a {kind.__name__}, got {value!r}") from None
        if value is not None and value < 0:
            raise InputError(f"{key} must be >= 0, got {value}")
        return value

    backend = str(args.get("backend", ModelChoice.backend))
    bundle = args.get("bundle")
    model = ModelChoice(
        bundle=None if bundle in (None, "") else Path(str(bundle)),
        backend=backend,
        precision=args.get("precision"),
        decoder=str(args.get("decoder", ModelChoice.decoder)),
        max_side=number("max_size", int, None),
    )
    limits = Limits(
        max_batch=max(1, number("max_batch", int, Limits.max_batch)),
        max_queue=max(1, number("max_queue", int, Limits.max_queue)),
        batch_wait_ms=number("batch_wait_ms", float, Limits.batch_wait_ms),
    )
    autoscale = args.get("autoscale")
    autoscale = None if autoscale is None else parse_autoscale(autoscale, "autoscale")
    gpus = number("gpus_per_replica", float, None)
    plan = RayPlan(
        replicas=max(1, number("replicas", int, 1)),
        autoscale=autoscale,
        gpus_per_replica=default_gpus_per_replica(backend) if gpus is None else gpus,
        cpus_per_replica=number("cpus_per_replica", float, 1.0),
    )
    return model, plan, limits


def app_builder(args: dict[str, Any]) -> serve.Application:
    """The application for `serve run` and KubeRay's RayService (import path
    `edgediff.serve.ray_app:app_builder`), configured by `args` (BUILDER_ARGS)."""
    return application(*settings_from_args(args))


def serve_on_ray(model: ModelChoice, plan: RayPlan, host: str, port: int, limits: Limits) -> None:
    """Deploy on Ray (joining `plan.address`, or a local Ray), answer until SIGTERM or Ctrl-C,
    then take the application down gracefully."""
    import ray

    if plan.address is None:
        from edgediff.serve.server import check_port_free

        check_port_free(host, port)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=plan.address, logging_level=logging.WARNING, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(application(model, plan, limits), name=APP_NAME, route_prefix="/")
        _log.info("serving on http://%s:%d with Ray Serve (docs at /docs)", host, port)
        stop.wait()
        _log.info("stopping: finishing in-flight requests")
        serve.delete(APP_NAME)
    finally:
        if plan.address is None:
            serve.shutdown()  # the local Ray goes with this command; a cluster's Serve stays
        if started_ray:
            ray.shutdown()
