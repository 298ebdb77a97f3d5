"""Backends by name. Each is imported only when asked for, so a missing one costs nothing."""

from __future__ import annotations

from edgediff.errors import BackendError
from edgediff.runtime.backends.base import Backend, Session

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt")


def get_backend(name: str, **options) -> Backend:
    """The backend called `name` (see BACKENDS), ready to load models."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}'", f"Use one of: {', '.join(BACKENDS)}")
    if name.startswith("ort-"):
        from edgediff.runtime.backends.onnxruntime import OrtBackend

        return OrtBackend(name, **options)
    from edgediff.runtime.backends.tensorrt import TrtBackend

    return TrtBackend(**options)


__all__ = ["BACKENDS", "Backend", "Session", "get_backend"]
