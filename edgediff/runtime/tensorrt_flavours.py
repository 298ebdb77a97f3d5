"""Which TensorRT is installed here, and importing it; the flavours themselves are named in
edgediff.bundle.flavours, since engine records carry them."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from edgediff.bundle.flavours import FLAVOURS, Toolkit, title_of
from edgediff.errors import BackendError

_MODULE = {"tensorrt": "tensorrt", "rtx": "tensorrt_rtx"}
_INSTALL = {
    "tensorrt": "pip install 'edgediff[trt]' (on Jetson it comes with JetPack: sudo apt install "
    "python3-libnvinfer, with a venv made by `python3 -m venv --system-site-packages`)",
    "rtx": "pip install 'edgediff[trt-rtx]' (RTX GPUs on Linux and Windows PCs)",
}


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
            f"{title_of(flavour)}'s Python package is not installed",
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
