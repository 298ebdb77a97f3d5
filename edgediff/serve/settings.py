"""What a server loads and how much it takes on; the one place the serving defaults live.

Importable without the `[serve]` extra, so the CLI can show them in --help.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgediff.errors import InputError
from edgediff.runtime.backends import DEFAULT_BACKEND
from edgediff.runtime.request import DEFAULT_DECODER

SERVE_HOST = "127.0.0.1"  # this machine only, unless asked: the API has no authentication
SERVE_PORT = 8000
SERVE_MAX_BATCH = 8
SERVE_MAX_QUEUE = 64
# How long a request that finds the pipeline idle waits for others to share its call. Under
# load, requests gather while a call runs, so batches fill without waiting; measured on the
# shipped model (2 cores), waiting 2 ms cost 5 ms of latency at one client and no throughput.
SERVE_BATCH_WAIT_MS = 0.0
# How long a stop (SIGTERM, Ctrl-C) waits for in-flight requests before it drops them.
GRACEFUL_STOP_S = 60


@dataclass(frozen=True)
class Limits:
    """How much a server takes on: images per pipeline call (and per request), and requests
    queued or running before it answers 429; and how long a request waits for company."""

    max_batch: int = SERVE_MAX_BATCH
    max_queue: int = SERVE_MAX_QUEUE
    batch_wait_ms: float = SERVE_BATCH_WAIT_MS


@dataclass(frozen=True)
class ModelChoice:
    """Which pipeline a server (or each Ray replica) loads, as `edgediff generate` names it."""

    bundle: Path | None = None  # None: the model shipped with edgediff
    backend: str = DEFAULT_BACKEND
    precision: str | None = None
    decoder: str = DEFAULT_DECODER
    max_side: int | None = None  # None: 4x the model's default size
    threads: int | None = None  # ONNX Runtime threads per pipeline (None: all cores)

    def backend_options(self) -> dict | None:
        """ONNX Runtime settings for a server: its threads do not spin while idle, since they
        share the cores with HTTP and encoding work (measured on the shipped model, 2 cores,
        16 clients: 65 images/s against 40 with spinning; 1 client: 28 ms against 29)."""
        if not self.backend.startswith("ort-"):
            return None
        return {"spin": False, **({"threads": self.threads} if self.threads else {})}

    def load(self):  # -> BatchRunner (imported here: it loads numpy and the runtime)
        """Load the pipeline and wrap it for serving."""
        from edgediff.runtime.pipeline import Pipeline
        from edgediff.serve.batches import BatchRunner

        pipeline = Pipeline.load(
            self.bundle,
            backend=self.backend,
            precision=self.precision,
            decoder=self.decoder,
            backend_options=self.backend_options(),
        )
        return BatchRunner(pipeline, self.backend, self.precision, self.decoder, self.max_side)


@dataclass(frozen=True)
class RayPlan:
    """Where and how many, with Ray Serve: the cluster (None: a local Ray for this command),
    the replicas (a fixed count, or a range Ray scales within), what each one holds."""

    address: str | None = None
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0


def default_gpus_per_replica(backend: str) -> float:
    """A whole GPU per replica for GPU backends; none for ort-cpu."""
    return 0.0 if backend == "ort-cpu" else 1.0


def parse_autoscale(text: str, name: str = "--autoscale") -> tuple[int, int]:
    """ "MIN:MAX" replicas as two ints, or a one-line error naming `name`."""
    low, sep, high = str(text).partition(":")
    if not (sep and low.isdigit() and high.isdigit()) or int(high) < max(int(low), 1):
        raise InputError(
            f"{name} must be MIN:MAX with 0 <= MIN <= MAX and MAX >= 1, got '{text}'",
            "E.g. 1:4",
        )
    return int(low), int(high)
