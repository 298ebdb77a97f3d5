"""Handing freed heap memory back to the operating system (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl, macOS and Windows have none
    except (OSError, AttributeError):
        return None


def release_freed_heap() -> None:
    """Return the heap pages malloc keeps after large frees to the OS.

    Loading a model whose weights sit inside the .onnx file parses the whole file, copies the
    weights out and frees the parse; glibc keeps those pages, so the process stays a model
    larger than it is (SD 1.5: text encoder +0.15 GiB, VAE decoder +0.42 GiB, measured).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
