"""Every numeric tolerance edgediff checks against, in one place.

Relative errors are max|a - b| / max|b|: relative to the reference's range, because an
element-wise ratio is meaningless where the reference crosses zero.
"""

from __future__ import annotations

# Export verification: ONNX Runtime vs PyTorch, one component call, per stored precision.
# fp32 graphs differ from eager PyTorch only by kernel summation order (seen: <= 2.2e-5 abs at
# SD 1.5 sizes); fp16 weights carry ~1e-3 relative rounding that deep nets amplify.
EXPORT_REL_TOL: dict[str, float] = {"fp32": 1e-4, "fp16": 3e-2}

# Runtime pipeline vs diffusers' StableDiffusionPipeline on the same latents, images in [0, 1].
PIPELINE_IMAGE_ATOL = 1e-3

# numpy DDIM scheduler vs diffusers' DDIMScheduler, float64, one step.
SCHEDULER_ATOL = 1e-6

# Exported evaluator (ONNX Runtime) vs its PyTorch model: logits and features, absolute.
EVALUATOR_ATOL = 1e-4


def max_errors(actual, reference) -> tuple[float, float]:
    """(max abs error, max abs error relative to the reference's largest magnitude)."""
    import numpy as np

    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    abs_err = float(np.max(np.abs(actual - reference))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return abs_err, abs_err / max(scale, 1e-12)
