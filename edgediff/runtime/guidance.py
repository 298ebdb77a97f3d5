"""Classifier-free guidance as pure array math."""

from __future__ import annotations

import numpy as np

# The default scale, picked for the shipped shapes model on prompts `edgediff eval` does not
# report (see README, "The shipped model").
DEFAULT_GUIDANCE = 3.0


def is_guided(guidance_scale: float) -> bool:
    """Guidance <= 1 needs no unconditional pass (w = 1 is the conditional model alone)."""
    return guidance_scale > 1.0


def guided(noise_pred: np.ndarray, guidance_scale: float) -> np.ndarray:
    """eps_u + w (eps_c - eps_u), from one U-Net output on the batch [uncond; cond]."""
    if not is_guided(guidance_scale):
        return noise_pred
    eps_uncond, eps_cond = np.split(noise_pred, 2, axis=0)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)
