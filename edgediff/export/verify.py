"""Compare an exported model in ONNX Runtime (CPU) with its PyTorch module on the same inputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgediff.graphs.compare import cpu_session, errors

if TYPE_CHECKING:
    import onnxruntime
    import torch


def torch_outputs(module: torch.nn.Module, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the wrapped torch module on named numpy inputs; outputs as numpy, in graph order."""
    import torch

    with torch.no_grad():
        out = module(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    outs = out if isinstance(out, tuple) else (out,)
    return [o.float().numpy() for o in outs]


def compare(
    module: torch.nn.Module, session: onnxruntime.InferenceSession, inputs: dict[str, np.ndarray]
) -> dict[str, Any]:
    """errors() of an ONNX Runtime session against the torch module on the same inputs."""
    return errors(session.run(None, inputs), torch_outputs(module, inputs), inputs)


def measure(
    path: Path,
    cases: list[dict[str, np.ndarray]],
    expected: list[list[np.ndarray]],
    threads: int = 0,
) -> tuple[dict[str, Any], ...]:
    """errors() of the model at `path` on each case against torch outputs computed beforehand.

    Taking torch's outputs rather than the module lets the caller free the torch weights before
    ONNX Runtime loads its own copy (3.4 GB each for an SD 1.5 U-Net).
    """
    session = cpu_session(path, threads)
    return tuple(
        errors(session.run(None, case), want, case)
        for case, want in zip(cases, expected, strict=True)
    )
