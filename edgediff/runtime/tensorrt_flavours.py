"""Which TensorRT is installed: classic TensorRT (8.6 to 11) or TensorRT-RTX (1.x).

Both ship the same Python API under different module names, and differ where edgediff cares:

| | `tensorrt` (flavour "tensorrt") | `tensorrt_rtx` (flavour "rtx") |
| --- | --- | --- |
| devices | Jetson Orin (8.7), datacenter GPUs, desktops | RTX GPUs 8.0+ (7.5 on request) |
| builds | on the GPU that runs the engine | ahead of time, no GPU, for listed targets |
| typing | builder flags on 8.6/10; strongly typed from 11 | always strongly typed |
| caches | timing cache at build time | runtime cache of JIT-compiled kernels |
| CUDA graphs | captured by the caller | captured by TensorRT-RTX itself |

A version is always recorded with its flavour ("trt-10.3.0", "rtx-1.7.1.116"), so a
TensorRT-RTX 1.x is never read as a TensorRT major version.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from edgediff.errors import BackendError

FLAVOURS = ("tensorrt", "rtx")
_MODULE = {"tensorrt": "tensorrt", "rtx": "tensorrt_rtx"}
_PREFIX = {"tensorrt": "trt", "rtx": "rtx"}
_TITLE = {"tensorrt": "TensorRT", "rtx": "TensorRT-RTX"}
_INSTALL = {
    "tensorrt": "pip install 'edgediff[trt]' (on Jetson it comes with JetPack: sudo apt install "
    "python3-libnvinfer, with a venv made by `python3 -m venv --system-site-packages`)",
    "rtx": "pip install 'edgediff[trt-rtx]' (RTX GPUs on Linux and Windows PCs)",
}
# The first classic TensorRT whose networks are always strongly typed (no FP16/INT8 flags).
ALWAYS_STRONGLY_TYPED_MAJOR = 11


@dataclass(frozen=True)
class Toolkit:
    """One installed TensorRT flavour and its version, as engines record it."""

    flavour: str  # "tensorrt" or "rtx"
    version: str  # the module's own version: "10.3.0", "1.7.1.116"

    @property
    def qualified_version(self) -> str:
        """The version with its flavour: "trt-10.3.0", "rtx-1.7.1.116"."""
        return qualified_version(self.flavour, self.version)

    @property
    def short(self) -> str:
        """ "trt" or "rtx": the prefix of versions, and the folder of engines in a bundle."""
        return _PREFIX[self.flavour]

    @property
    def title(self) -> str:
        """ "TensorRT 10.3.0" or "TensorRT-RTX 1.7.1.116"."""
        return f"{title_of(self.flavour)} {self.version}"

    @property
    def major(self) -> int:
        """The flavour's own major version (a TensorRT-RTX 1 is not a TensorRT 1)."""
        return int(self.version.split(".")[0])

    @property
    def always_strongly_typed(self) -> bool:
        """Whether precision can only come from the ONNX (no FP16/INT8 builder flags)."""
        return self.flavour == "rtx" or self.major >= ALWAYS_STRONGLY_TYPED_MAJOR

    @property
    def builds_ahead_of_time(self) -> bool:
        """Whether engines are built for listed targets, with no GPU needed (TensorRT-RTX)."""
        return self.flavour == "rtx"


def title_of(flavour: str) -> str:
    """ "TensorRT" for "tensorrt", "TensorRT-RTX" for "rtx" (an unknown name as it is)."""
    return _TITLE.get(flavour, flavour)


def qualified_version(flavour: str, version: str) -> str:
    """ "trt-10.3.0" for TensorRT 10.3.0, "rtx-1.7.1.116" for TensorRT-RTX 1.7.1.116."""
    return f"{_PREFIX[flavour]}-{version}"


def describe(qualified: str) -> str:
    """ "trt-10.3.0" -> "TensorRT 10.3.0", "rtx-1.7.1.116" -> "TensorRT-RTX 1.7.1.116"."""
    prefix, _, version = qualified.partition("-")
    for flavour, p in _PREFIX.items():
        if p == prefix:
            return f"{_TITLE[flavour]} {version}"
    return f"TensorRT {qualified}"


def installed_flavours() -> list[str]:
    """The flavours whose Python module is importable here, without importing them."""
    return [f for f in FLAVOURS if importlib.util.find_spec(_MODULE[f]) is not None]


def check_flavour(flavour: str) -> str:
    """`flavour` if it names one, else a one-line error listing them."""
    if flavour not in FLAVOURS:
        raise BackendError(
            f"unknown TensorRT flavour '{flavour}'", f"Use one of: {', '.join(FLAVOURS)}"
        )
    return flavour


def import_tensorrt(flavour: str | None = None) -> Any:
    """The TensorRT module of `flavour` (None: whichever one is installed), or a BackendError
    that says how to install it or how to choose."""
    if flavour is None:
        found = installed_flavours()
        if len(found) > 1:
            raise BackendError(
                "both TensorRT and TensorRT-RTX are installed, and nothing says which to use",
                "Pick one with --flavour tensorrt or --flavour rtx (flavour= in Python)",
            )
        if not found:
            raise BackendError(
                "neither TensorRT nor TensorRT-RTX is installed",
                f"For Jetson and datacenter GPUs: {_INSTALL['tensorrt']}. For RTX PCs: "
                f"{_INSTALL['rtx']}",
            )
        flavour = found[0]
    check_flavour(flavour)
    try:
        return importlib.import_module(_MODULE[flavour])
    except ImportError:
        raise BackendError(
            f"{_TITLE[flavour]}'s Python package is not installed",
            f"Install it: {_INSTALL[flavour]}",
        ) from None


def toolkit_of(module: Any) -> Toolkit:
    """The flavour and version of an imported TensorRT module."""
    flavour = "rtx" if module.__name__.startswith("tensorrt_rtx") else "tensorrt"
    return Toolkit(flavour, str(module.__version__))


def rtx_targets(module: Any) -> dict[str, Any]:
    """TensorRT-RTX's buildable compute capabilities: {"8.6": ComputeCapability.SM86, ...}."""
    targets = {}
    for name, value in module.ComputeCapability.__members__.items():
        if name.startswith("SM") and name[2:].isdigit():
            sm = int(name[2:])
            targets[f"{sm // 10}.{sm % 10}"] = value
    return targets
