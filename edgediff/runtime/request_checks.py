"""Checks on every argument of a generation request, before anything is allocated or run.

Each check returns the value in the form the pipeline uses, or raises an InputError that names
the argument, what was wrong with it and what would do. Nothing here knows about backends.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgediff.errors import InputError

# Guidance beyond this drives the latents to overflow float32 within a few steps (an image of
# NaNs); published models use 1 to 20.
MAX_GUIDANCE = 100.0
MAX_SEED = 2**64 - 1  # the C API's seed is a uint64


def integer(value: Any, name: str, low: int, high: int | None = None) -> int:
    """`value` as an int in [low, high]; bools, floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"{name} must be {bound}, got {value}")
    return value


def real(value: Any, name: str, low: float, high: float) -> float:
    """`value` as a finite float in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise InputError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value}")
    return value


def prompts(value: Any, name: str) -> list[str]:
    """A string, or a non-empty list or tuple of strings, as a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray) and value:
        items = list(value)
        if all(isinstance(p, str) for p in items):
            return items
    raise InputError(f"{name} must be a string or a non-empty list of strings, got {value!r}")


def seed(value: Any) -> int | None:
    """None (a fresh seed) or an integer in [0, 2**64 - 1]."""
    return None if value is None else integer(value, "seed", 0, MAX_SEED)


def latents(value: Any, channels: int) -> np.ndarray | None:
    """None, or finite float32 latents of shape (batch, channels, h, w)."""
    if value is None:
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        raise InputError("latents must be an array of numbers") from None
    if array.dtype.kind not in "fiu" or array.ndim != 4 or array.shape[1] != channels:
        raise InputError(
            f"latents must be a float array of shape (batch, {channels}, h, w), got "
            f"{array.dtype} {array.shape}"
        )
    if 0 in array.shape:
        raise InputError(f"latents must not be empty, got shape {array.shape}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError("latents hold NaN or infinite values")
    return array


def physical_memory_bytes() -> int | None:
    """This machine's RAM, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits_in_memory(images: int, height: int, width: int, channels: int, factor: int) -> None:
    """Refuse a request whose latents and float images alone exceed this machine's RAM.

    A lower bound: the networks' activations come on top, so a request that passes can still
    fail inside a backend, but one that fails here never could have worked.
    """
    ram = physical_memory_bytes()
    latent = images * channels * (height // factor) * (width // factor) * 4
    pixels = images * 3 * height * width * 4
    need = 3 * latent + 2 * pixels  # latents, noise and step; decoded and converted images
    if ram is not None and need > ram:
        raise InputError(
            f"{images} image(s) of {height}x{width} need at least {need / 2**30:.1f} GiB for "
            f"latents and pixels alone, more than this machine's {ram / 2**30:.1f} GiB",
            "Ask for fewer or smaller images",
        )
