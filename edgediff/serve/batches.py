"""Requests that can share a pipeline call run as one call; each still gets its own images.

A seeded request's images are fixed by its seed alone, whether it runs alone or beside others:
its starting noise is drawn from its own seed (`Pipeline.initial_noise`), and a batch of
deterministic (eta 0) requests that agree on steps, guidance and size runs their noises
together. ONNX Runtime computes each image of a batch independently, so a batched image equals
the one `edgediff generate` makes with that seed (the tests compare PNG bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgediff.errors import EdgediffError, InputError
from edgediff.runtime.images import encode_png
from edgediff.runtime.pipeline import Pipeline
from edgediff.runtime.request import GenerationRequest

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What one request got: PNG files and the record they carry, or an error and its status."""

    pngs: tuple[bytes, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)  # the PNGs' record, less "index"
    call_images: int = 0  # images the pipeline call that made these made in all
    first_of_call: bool = False  # counts the call once when several requests shared it
    error: str | None = None
    status: int = 200  # the HTTP status an error maps to

    @property
    def ok(self) -> bool:
        """Whether the request produced images."""
        return self.error is None


def failed(error: BaseException) -> Outcome:
    """The outcome of a request that raised `error`: 400 for the user's input, else 500."""
    status = 400 if isinstance(error, InputError) else 500
    if not isinstance(error, EdgediffError):
        _log.exception("generation failed", exc_info=error)
        return Outcome(error=f"generation failed: {type(error).__name__}: {error}", status=500)
    return Outcome(error=str(error), status=status)


class BatchRunner:
    """Runs requests on one pipeline, grouping those that can share a call, and encodes PNGs.

    `backend`, `precision` and `decoder` are the names the pipeline was loaded with, recorded
    in each PNG as `edgediff generate` records them. `max_side` bounds width and height.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        backend: str,
        precision: str | None,
        decoder: str,
        max_side: int | None = None,
    ):
        self.pipeline = pipeline
        self.backend = backend
        self.precision = precision
        self.decoder = decoder
        self.max_side = max_side or 4 * pipeline.config.default_image_size

    def close(self) -> None:
        """Release the pipeline."""
        self.pipeline.close()

    def info(self) -> dict[str, Any]:
        """What this runner serves, for /health."""
        pipe = self.pipeline
        return {
            "bundle": str(pipe.bundle.root),
            "backend": self.backend,
            "precision": self.precision or "default",
            "decoder": self.decoder,
            "default_steps": pipe.default_steps,
            "default_guidance": pipe.default_guidance,
            "default_size": pipe.config.default_image_size,
            "max_size": self.max_side,
        }

    def settings(self, request: GenerationRequest) -> tuple[int, float, int, int]:
        """(steps, guidance, height, width) the request runs with, defaults filled in."""
        pipe = self.pipeline
        steps = pipe.default_steps if request.steps is None else request.steps
        guidance = pipe.guidance_for(steps) if request.guidance is None else request.guidance
        side = pipe.config.default_image_size
        if request.source is not None:
            # An edited image keeps its own size unless one is asked for.
            width, height = _size_of(request.source.image)
            height = height if request.height is None else request.height
            width = width if request.width is None else request.width
        else:
            height = side if request.height is None else request.height
            width = side if request.width is None else request.width
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, int) and value > self.max_side:
                raise InputError(
                    f"{name} {value} is more than this server's largest side, {self.max_side}",
                    "Ask for a smaller image, or start the server with a larger --max-size",
                )
        return steps, guidance, height, width

    def key(self, request: GenerationRequest) -> Hashable:
        """Requests with equal keys can share one pipeline call."""
        if request.eta != 0 or request.source is not None:
            # eta > 0 draws fresh noise from the seed's generator at each step: batched, the
            # requests would share one generator and their images would depend on each other.
            # An edit starts from its own image, which `latents=` cannot carry.
            return ("alone", id(request))
        return self.settings(request)

    def run(self, requests: list[GenerationRequest]) -> list[Outcome]:
        """One outcome per request (seeds fixed), in order; a bad request fails alone."""
        outcomes: dict[int, Outcome] = {}
        groups: dict[Hashable, list[int]] = {}
        for i, request in enumerate(requests):
            try:
                groups.setdefault(self.key(request), []).append(i)
            except Exception as e:
                outcomes[i] = failed(e)
        for members in groups.values():
            group = [requests[i] for i in members]
            try:
                results = self._together(group) if len(group) > 1 else [self._alone(group[0])]
            except EdgediffError:
                # Which request was at fault? Run each alone, so only that one fails.
                results = [self._alone_or_failed(r) for r in group]
            except Exception as e:
                results = [failed(e)] * len(group)
            outcomes.update(zip(members, results, strict=True))
        return [outcomes[i] for i in range(len(requests))]

    def _alone_or_failed(self, request: GenerationRequest) -> Outcome:
        try:
            return self._alone(request)
        except Exception as e:
            return failed(e)

    def _alone(self, request: GenerationRequest) -> Outcome:
        """Exactly what `edgediff generate` runs for this request."""
        steps, guidance, height, width = self.settings(request)
        images = self.pipeline(**request.pipeline_arguments())
        return self._outcome(request, images, (steps, guidance, height, width), len(images), True)

    def _together(self, group: list[GenerationRequest]) -> list[Outcome]:
        """One pipeline call for requests that share steps, guidance, size and eta 0."""
        steps, guidance, height, width = settings = self.settings(group[0])
        pipe = self.pipeline
        noise = np.concatenate(
            [
                pipe.initial_noise(r.count, height, width, np.random.default_rng(r.seed))
                for r in group
            ]
        )
        prompts = [r.prompt for r in group for _ in range(r.count)]
        negatives = None
        if any(r.negative_prompt for r in group):
            negatives = [r.negative_prompt or "" for r in group for _ in range(r.count)]
        images = pipe(
            prompts,
            negative_prompt=negatives,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            latents=noise,
        )
        outcomes, start = [], 0
        for i, request in enumerate(group):
            mine = images[start : start + request.count]
            start += request.count
            outcomes.append(self._outcome(request, mine, settings, len(images), i == 0))
        return outcomes

    def _outcome(
        self,
        request: GenerationRequest,
        images: list,
        settings: tuple[int, float, int, int],
        call_images: int,
        first: bool,
    ) -> Outcome:
        steps, guidance, height, width = settings
        record = request.provenance(
            steps=steps,
            guidance=guidance,
            height=height,
            width=width,
            bundle=str(self.pipeline.bundle.root),
            backend=self.backend,
            precision=self.precision,
        )
        record["decoder"] = self.decoder
        pngs = tuple(encode_png(image, {**record, "index": i}) for i, image in enumerate(images))
        return Outcome(
            pngs=pngs,
            parameters=record,
            call_images=call_images,
            first_of_call=first,
        )


def _size_of(image: object) -> tuple[int, int]:
    """(width, height) of a PIL image or an H×W(×C) array."""
    if hasattr(image, "size") and isinstance(image.size, tuple):
        return image.size
    shape = getattr(image, "shape", (0, 0))
    return int(shape[1]), int(shape[0])
