"""The HTTP app: both request dialects, admission control, health and metrics.

One app for both ways of serving: `LocalService` runs the pipeline in this process, the Ray
deployment's service forwards to pipeline replicas. Everything HTTP is decided here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from edgediff import __version__
from edgediff.errors import EdgediffError
from edgediff.runtime.request import GenerationRequest
from edgediff.serve.apis import (
    A1111Img2ImgRequest,
    A1111Txt2ImgRequest,
    OpenAIImageRequest,
    a1111_response,
    openai_response,
)
from edgediff.serve.batches import Outcome
from edgediff.serve.local import ImageService
from edgediff.serve.metrics import ServerMetrics
from edgediff.serve.settings import Limits

_log = logging.getLogger(__name__)


class HTTPError(Exception):
    """An answer other than 200: status, message, and the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error"):
    """The error shape OpenAI's API answers with (A1111 clients read `error.message` too)."""
    return {"error": {"message": message, "type": kind, "param": param}}


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def create_app(service: ImageService, limits: Limits | None = None) -> FastAPI:
    """The FastAPI app serving `service`; it starts and closes the service with the app."""
    limits = limits or Limits()
    metrics = ServerMetrics()
    state = {"taken": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            # uvicorn gets here after the in-flight requests were answered (graceful stop).
            await service.close()

    app = FastAPI(
        title="edgediff",
        version=__version__,
        summary="Text-to-image on one device: OpenAI- and AUTOMATIC1111-style endpoints.",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = _field(tuple(first.get("loc", ())))
        message = first.get("msg", "invalid value").removeprefix("Value error, ")
        if field == "body" or first.get("type") == "json_invalid":
            field = "body"
            message = "the body must be a JSON object (Content-Type: application/json)"
        else:
            message = f"{field}: {message}"
        _count(request, 400)
        return JSONResponse(error_body(message, field), status_code=400)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        _count(request, exc.status)
        kind = "rate_limit_error" if exc.status == 429 else "invalid_request_error"
        if exc.status >= 500:
            kind = "server_error"
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        return JSONResponse(
            error_body(exc.message, exc.param, kind), status_code=exc.status, headers=headers
        )

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        # A bug, or a Ray replica that died mid-request: still the error shape clients parse.
        _log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        _count(request, 500)
        message = f"the server failed: {type(exc).__name__}: {exc}".splitlines()[0]
        return JSONResponse(error_body(message, None, "server_error"), status_code=500)

    def _count(request: Request, status: int) -> None:
        if request.url.path in ENDPOINTS:
            metrics.requests.labels(ENDPOINTS[request.url.path], str(status)).inc()

    async def run(endpoint: str, generation: Callable[[], GenerationRequest], n: int) -> Outcome:
        """Admit, run, and account for one generation request."""
        if n > limits.max_batch:
            field = "n" if endpoint == "openai" else "batch_size"
            raise HTTPError(
                400,
                f"{field}: {n} images is more than this server makes in one call "
                f"({limits.max_batch}); ask for fewer or start it with a larger --max-batch",
                field,
            )
        if state["taken"] >= limits.max_queue:
            raise HTTPError(
                429,
                f"the server is busy: {state['taken']} requests are queued or running "
                f"(--max-queue {limits.max_queue}); retry shortly",
            )
        try:
            request = generation()
        except EdgediffError as e:  # a field only the request's decoding could judge
            raise HTTPError(400, str(e)) from None
        start = time.perf_counter()
        state["taken"] += 1
        metrics.queue_depth.set(state["taken"])
        try:
            outcome = await service.generate(request)
        finally:
            state["taken"] -= 1
            metrics.queue_depth.set(state["taken"])
        if outcome.first_of_call:
            metrics.batch_images.observe(outcome.call_images)
        if not outcome.ok:
            raise HTTPError(outcome.status, outcome.error or "generation failed")
        metrics.requests.labels(endpoint, "200").inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        metrics.images.inc(len(outcome.pngs))
        return outcome

    @app.post("/v1/images/generations", summary="Text to image, as OpenAI's Images API")
    async def openai_generations(body: OpenAIImageRequest) -> dict[str, Any]:
        """Images for a prompt; `seed` makes the same PNGs as `edgediff generate --seed`."""
        outcome = await run("openai", body.generation, body.n)
        return openai_response(outcome)

    @app.post("/sdapi/v1/txt2img", summary="Text to image, as AUTOMATIC1111's web UI API")
    async def a1111_txt2img(body: A1111Txt2ImgRequest) -> dict[str, Any]:
        """Images for a prompt; `seed` -1 draws a new one (reported in `info`)."""
        outcome = await run("a1111", body.generation, body.batch_size * body.n_iter)
        return a1111_response(body, outcome)

    @app.post("/sdapi/v1/img2img", summary="Image to image and inpainting, as AUTOMATIC1111's")
    async def a1111_img2img(body: A1111Img2ImgRequest) -> dict[str, Any]:
        """Edit `init_images[0]` toward the prompt; with `mask`, only where it is white."""
        outcome = await run("a1111-img2img", body.generation, body.batch_size * body.n_iter)
        return a1111_response(body, outcome)

    @app.get("/health", summary="200 once a pipeline is loaded and answering")
    async def health() -> dict[str, Any]:
        """What is served, and how busy the server is."""
        try:
            info = await service.info()
        except Exception as e:
            raise HTTPError(503, f"not ready: {e}") from None
        return {"status": "ok", "queued": state["taken"], **info, "limits": limits.__dict__}

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        """Requests, queue depth, batch sizes and latency, in Prometheus' text format."""
        return Response(metrics.render(), media_type=metrics.content_type)

    app.state.metrics = metrics
    return app


ENDPOINTS = {
    "/v1/images/generations": "openai",
    "/sdapi/v1/txt2img": "a1111",
    "/sdapi/v1/img2img": "a1111-img2img",
}
