"""Whether a TensorRT engine can run here, and what to type when it cannot.

TensorRT engines are not portable. A classic TensorRT engine is valid only for the TensorRT
version that built it and for GPUs of the compute capability it was built on; a TensorRT-RTX
engine only for its TensorRT-RTX version and for the compute capabilities it was built for (its
targets). TensorRT itself fails deep inside deserialisation with a terse log line; these checks
fail first, with the command that fixes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgediff.bundle.flavours import Toolkit, describe
from edgediff.bundle.reader import build_command
from edgediff.bundle.schema import EngineEntry
from edgediff.errors import BackendError, InputError


@dataclass(frozen=True)
class Platform:
    """Where engines are built or run: the installed TensorRT and the GPU, if there is one."""

    toolkit: Toolkit
    gpu_name: str | None = None
    compute_capability: str | None = None  # "major.minor"; None where there is no GPU
    # Compute capabilities the toolkit builds for without that GPU (TensorRT-RTX); () for classic.
    known_targets: tuple[str, ...] = ()

    @property
    def sm(self) -> int | None:
        """The GPU's compute capability as one number (8.7 -> 87), as CUDA names architectures."""
        return None if self.compute_capability is None else sm_of(self.compute_capability)

    def describe(self) -> str:
        """ "TensorRT 10.3.0 on Orin (compute capability 8.7)", or "... (no GPU)"."""
        if self.gpu_name is None:
            return f"{self.toolkit.title} (no GPU here)"
        gpu = f"{self.gpu_name} (compute capability {self.compute_capability})"
        return f"{self.toolkit.title} on {gpu}"


def sm_of(compute_capability: str) -> int:
    """ "8.7" -> 87, "12.0" -> 120."""
    major, minor = compute_capability.split(".")
    return int(major) * 10 + int(minor)


def incompatibility(engine: EngineEntry, here: Platform) -> str | None:
    """Why `engine` cannot run on `here`, or None when it can."""
    name = f"the {engine.precision} {engine.component} engine"
    built_by = describe(engine.tensorrt_version)
    if engine.flavour != here.toolkit.flavour:
        return f"{name} was built by {built_by}; this machine runs {here.toolkit.title} instead"
    if engine.tensorrt_version != here.toolkit.qualified_version:
        return f"{name} was built by {built_by}; this is {here.toolkit.title}, which cannot load it"
    if here.compute_capability in engine.targets:
        return None
    gpu = f"this GPU is a {here.gpu_name} (compute capability {here.compute_capability})"
    if engine.flavour == "rtx":
        return f"{name} was built for compute capabilities {', '.join(engine.targets)}; {gpu}"
    built_on = ", ".join(engine.targets)
    return f"{name} was built for a {engine.gpu_name} (compute capability {built_on}); {gpu}"


def require_compatible(engine: EngineEntry, here: Platform, bundle_root: str | Path) -> None:
    """Raise a BackendError naming the mismatch and the rebuild command, if there is one."""
    problem = incompatibility(engine, here)
    if problem is None:
        return
    if engine.flavour != here.toolkit.flavour:
        options = ("--flavour", here.toolkit.flavour, "--force")
        fix = "Rebuild the engines with the TensorRT installed here"
    elif engine.flavour == "rtx" and engine.tensorrt_version == here.toolkit.qualified_version:
        targets = sorted({*engine.targets, str(here.compute_capability)}, key=sm_of)
        options = ("--targets", ",".join(targets), "--force")
        fix = "Rebuild the engines for this GPU too"
    else:
        options = ("--force",)
        fix = "Rebuild the engines on this device"
    raise BackendError(problem, f"{fix}: {build_command(bundle_root, engine.precision, *options)}")


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
