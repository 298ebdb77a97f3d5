"""Run an ONNX model on ONNX Runtime's CPU provider and measure how far it is from a reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgediff import tolerances
from edgediff.bundle.schema import Verification

if TYPE_CHECKING:
    import onnxruntime


def cpu_session(path: Path, threads: int = 0) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for `path`, quiet (errors only); threads=0 lets ORT choose."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    # The memory pattern planner pre-plans one block for a whole run: 3 GB more peak (9.4 vs
    # 6.4 GB) on an SD 1.5 U-Net at 512², batch 2, for no speed gain (41 vs 42-48 s, 2 cores).
    options.enable_mem_pattern = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def errors(
    actual: list[np.ndarray], expected: list[np.ndarray], inputs: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Max abs / rel error over all outputs for one set of inputs, with the input shapes."""
    pairs = [tolerances.max_errors(a, e) for a, e in zip(actual, expected, strict=True)]
    return {
        "inputs": {name: list(value.shape) for name, value in inputs.items()},
        "max_abs_error": max(p[0] for p in pairs),
        "max_rel_error": max(p[1] for p in pairs),
    }


def verification(
    checks: tuple[dict[str, Any], ...], precision: str, reference: str = "PyTorch"
) -> Verification:
    """The manifest record of `checks` against this precision's tolerance (read at call time)."""
    tolerance = tolerances.EXPORT_REL_TOL[precision]
    max_abs = max(c["max_abs_error"] for c in checks)
    max_rel = max(c["max_rel_error"] for c in checks)
    return Verification(
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        rel_tolerance=tolerance,
        passed=bool(np.isfinite(max_rel) and max_rel <= tolerance),
        shapes=checks,
        reference=reference,
    )
