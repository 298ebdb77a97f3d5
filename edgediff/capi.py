"""The Python half of the C API (include/edgediff.h): what libedgediff calls into.

The C library holds one `CPipeline` per `edgediff_pipeline` handle and calls `generate` with
plain values; images come back as one bytes object of RGB8 pixels. A user's progress callback
arrives as a C function address and is called through ctypes, so the C side needs no Python
callable of its own. Exceptions become status codes by `status_of`. A steps or count of 0
means edgediff.runtime.request's default, applied here at run time.
"""

from __future__ import annotations

import ctypes
import hashlib

import numpy as np

from edgediff.errors import BackendError, BundleError, EdgediffError, InputError
from edgediff.runtime.backends import DEFAULT_BACKEND
from edgediff.runtime.images import to_uint8
from edgediff.runtime.pipeline import Pipeline
from edgediff.runtime.request import (
    DEFAULT_COUNT,
    DEFAULT_DECODER,
    GenerationRequest,
    SourceImage,
)

# Status codes, as include/edgediff.h numbers them.
OK, INVALID_ARGUMENT, BUNDLE, BACKEND, CANCELLED, INTERNAL = 0, 1, 2, 3, 4, 5

# int progress(void *user, int step, int steps): non-zero asks to cancel.
PROGRESS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)


class CancelledError(EdgediffError):
    """The application's progress callback asked to stop."""


def status_of(error: BaseException) -> int:
    """The C status code for an exception raised by this module."""
    for kind, code in (
        (CancelledError, CANCELLED),
        (InputError, INVALID_ARGUMENT),
        (BundleError, BUNDLE),
        (BackendError, BACKEND),
    ):
        if isinstance(error, kind):
            return code
    return INTERNAL


class CPipeline:
    """A pipeline as one C handle sees it."""

    def __init__(self, bundle: str, backend: str, precision: str, decoder: str = ""):
        self.pipeline = Pipeline.load(
            bundle or None,
            backend=backend or DEFAULT_BACKEND,
            precision=precision or None,
            decoder=decoder or DEFAULT_DECODER,
        )

    def close(self) -> None:
        """Release the pipeline's sessions and backend (edgediff_close calls this)."""
        self.pipeline.close()

    def generate(
        self,
        prompt: str,
        negative_prompt: str | None,
        steps: int,
        guidance: float,
        seed: int,
        height: int,
        width: int,
        count: int,
        progress: int,
        user: int,
        image: bytes | None = None,
        image_height: int = 0,
        image_width: int = 0,
        mask: bytes | None = None,
        strength: float = 0.0,
    ) -> tuple[bytes, int, int, int]:
        """(RGB8 pixels of `count` images, count, height, width) for one request; with `image`
        (RGB8 bytes, and `mask` L8) an edit of it."""
        callback = None
        if progress:
            function = PROGRESS(progress)

            def callback(step: int, steps_total: int, _latents: np.ndarray) -> None:
                if function(user or None, step + 1, steps_total):
                    raise CancelledError(f"cancelled by the progress callback at step {step + 1}")

        # C has no None: 0 stands for "the default" (the C side has refused negatives), and a
        # negative guidance for the bundle's recommended scale (NaN stays NaN and is refused).
        request = GenerationRequest(
            prompt,
            negative_prompt=negative_prompt,
            steps=steps or None,
            guidance=None if guidance < 0 else guidance,
            seed=seed,
            height=height or None,
            width=width or None,
            count=count or DEFAULT_COUNT,
            source=_source(image, image_height, image_width, mask, strength),
        )
        images = self.pipeline(**request.pipeline_arguments(), output_type="np", callback=callback)
        pixels = np.ascontiguousarray(to_uint8(images))
        return pixels.tobytes(), pixels.shape[0], pixels.shape[1], pixels.shape[2]


def _source(
    image: bytes | None, height: int, width: int, mask: bytes | None, strength: float
) -> SourceImage | None:
    """The C request's image buffers as a SourceImage (strength 0: the default)."""
    if image is None:
        return None
    pixels = np.frombuffer(image, dtype=np.uint8).reshape(height, width, 3)
    return SourceImage(
        image=pixels,
        image_sha256=hashlib.sha256(image).hexdigest(),
        mask=None if mask is None else np.frombuffer(mask, dtype=np.uint8).reshape(height, width),
        mask_sha256=None if mask is None else hashlib.sha256(mask).hexdigest(),
        strength=None if strength == 0 else strength,
    )
