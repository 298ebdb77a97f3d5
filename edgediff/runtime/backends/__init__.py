"""Backends by name. Each is imported only when asked for, so a missing one costs nothing."""

from __future__ import annotations

from edgediff.errors import BackendError
from edgediff.runtime.backends.base import Backend, Session

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt")
# Runs anywhere edgediff installs; GPUs are asked for by name.
DEFAULT_BACKEND = "ort-cpu"


def get_backend(name: str, **options) -> Backend:
    """The backend called `name` (see BACKENDS), ready to load models."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}'", f"Use one of: {', '.join(BACKENDS)}")
    if name.startswith("ort-"):
        from edgediff.runtime.backends.onnxruntime import OrtBackend

        return OrtBackend(name, **options)
    from edgediff.runtime.backends.tensorrt import TrtBackend

    return TrtBackend(**options)


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "Session", "get_backend"]
