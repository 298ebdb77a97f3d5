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


# Quantisation. The target of `edgediff quantize --keep auto`: paired PSNR of final latents
# (images for the VAE decoder) against fp32 at the same prompts and seeds.
QUANT_TARGET_PSNR_DB = 30.0
# One component call on recorded calibration inputs, quantised vs fp32 (PSNR over the
# reference's range). Measured on the shipped shapes U-Net: >= 41.7 dB INT8, >= 38.7 dB FP8.
QUANT_CALL_MIN_PSNR_DB: dict[str, float] = {"int8": 35.0, "fp8": 32.0}

# GPU backends vs ONNX Runtime's CPU provider, final images of the same request (PSNR, peak 1).
# fp32 on the GPU still differs: cuDNN convolutions may use TF32; engines built at fp16 or from
# Q/DQ models differ as their precision does.
# FP8 has the INT8 limit until a GPU run measures it (its Q/DQ calls are 3 dB below INT8's).
GPU_IMAGE_MIN_PSNR_DB: dict[str, float] = {"fp32": 40.0, "fp16": 30.0, "int8": 30.0, "fp8": 30.0}


def max_errors(actual, reference) -> tuple[float, float]:
    """(max abs error, max abs error relative to the reference's largest magnitude)."""
    import numpy as np

    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    abs_err = float(np.max(np.abs(actual - reference))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return abs_err, abs_err / max(scale, 1e-12)
