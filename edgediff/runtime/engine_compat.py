"""Whether a TensorRT engine can run here, and what to type when it cannot.

TensorRT engines are not portable: one is valid only for the TensorRT version that built it and
for GPUs of the compute capability it was built on. TensorRT itself fails deep inside
deserialisation with a terse log line; these checks fail first, with the command that fixes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgediff.errors import BackendError, InputError
from edgediff.runtime.bundle import EngineEntry, build_command


@dataclass(frozen=True)
class Platform:
    """What an engine is bound to: the TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor"

    @property
    def sm(self) -> int:
        """Compute capability as one number (8.7 -> 87), as CUDA names architectures."""
        major, minor = self.compute_capability.split(".")
        return int(major) * 10 + int(minor)


def incompatibility(engine: EngineEntry, here: Platform) -> str | None:
    """Why `engine` cannot run on `here`, or None when it can."""
    name = f"the {engine.precision} {engine.component} engine"
    if engine.tensorrt_version != here.tensorrt_version:
        return (
            f"{name} was built by TensorRT {engine.tensorrt_version}; this is TensorRT "
            f"{here.tensorrt_version}, which cannot load it"
        )
    if engine.compute_capability != here.compute_capability:
        return (
            f"{name} was built for a {engine.gpu_name} (compute capability "
            f"{engine.compute_capability}); this GPU is a {here.gpu_name} (compute capability "
            f"{here.compute_capability})"
        )
    return None


def require_compatible(engine: EngineEntry, here: Platform, bundle_root: str | Path) -> None:
    """Raise a BackendError naming the mismatch and the rebuild command, if there is one."""
    problem = incompatibility(engine, here)
    if problem is not None:
        raise BackendError(
            problem,
            f"Rebuild the engines on this device: "
            f"{build_command(bundle_root, engine.precision, '--force')}",
        )


def outside_profile(
    name: str, shape: Sequence[int], low: Sequence[int], high: Sequence[int]
) -> str | None:
    """Why `shape` falls outside an engine input's [low, high] profile range, or None."""
    if len(shape) != len(low) or any(
        not lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True)
    ):
        return (
            f"input '{name}' has shape {tuple(shape)}, outside the engine's profile "
            f"{tuple(low)} .. {tuple(high)}"
        )
    return None


def require_in_profile(
    name: str, shape: Sequence[int], low: Sequence[int], high: Sequence[int]
) -> None:
    """Raise an InputError when a request does not fit the shapes an engine was built for."""
    problem = outside_profile(name, shape, low, high)
    if problem is not None:
        raise InputError(
            problem,
            "Ask for a batch and image size inside the ranges `edgediff build` was given "
            "(`edgediff info BUNDLE` lists them), or rebuild with wider --batch/--size ranges",
        )
