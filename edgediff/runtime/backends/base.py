"""The backend interface: load a model, run it on named arrays. The loop knows nothing more."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class Session(Protocol):
    """One loaded model."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on host arrays named as its inputs; return host arrays by output name.

        A device backend may skip copying an input that is the very array of its last call
        and read-only (so it cannot have changed); the pipeline passes its text embeddings so.
        """
        ...

    def close(self) -> None:
        """Release what the model holds (device buffers, contexts); it cannot run after."""
        ...


def unchanged(array: np.ndarray, last: np.ndarray | None) -> bool:
    """Whether `array` is the read-only array a session was given last time (no copy needed)."""
    return array is last and not array.flags.writeable


class Backend(Protocol):
    """Something that turns a model file into a Session (ONNX Runtime, TensorRT, ...)."""

    name: str
    # Where a Session's arrays live between calls: "host" (numpy) or "device" (GPU memory).
    array_location: str
    # What it loads: "onnx" (the bundle's ONNX models) or "engine" (TensorRT engines).
    model_format: str

    def load(self, model_path: Path, precision: str = "fp32") -> Session:
        """Load one model file, built or quantised at `precision`."""
        ...

    def close(self) -> None:
        """Release every session it loaded and anything shared (streams, scratch memory)."""
        ...
