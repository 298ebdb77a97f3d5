"""The two TensorRT flavours by name: classic TensorRT (8.6 to 11) and TensorRT-RTX (1.x).

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

from dataclasses import dataclass

FLAVOURS = ("tensorrt", "rtx")
_PREFIX = {"tensorrt": "trt", "rtx": "rtx"}
_TITLE = {"tensorrt": "TensorRT", "rtx": "TensorRT-RTX"}
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
