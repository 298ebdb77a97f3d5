"""Classifier-free guidance as pure array math, and the guided denoiser a sampler walks with."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgediff.runtime.samplers import Denoiser

# (sample, timestep, text embeddings) -> noise prediction: one U-Net call.
NoisePredictor = Callable[[np.ndarray, int, np.ndarray], np.ndarray]
# The same for a guidance-distilled U-Net, which also takes one guidance scale per image.
GuidedNoisePredictor = Callable[[np.ndarray, int, np.ndarray, np.ndarray], np.ndarray]


def is_guided(guidance_scale: float) -> bool:
    """Guidance <= 1 needs no unconditional pass (w = 1 is the conditional model alone)."""
    return guidance_scale > 1.0


def guided(noise_pred: np.ndarray, guidance_scale: float) -> np.ndarray:
    """eps_u + w (eps_c - eps_u), from one U-Net output on the batch [uncond; cond]."""
    if not is_guided(guidance_scale):
        return noise_pred
    eps_uncond, eps_cond = np.split(noise_pred, 2, axis=0)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def cfg_denoiser(unet: NoisePredictor, cond: np.ndarray, guidance_scale: float) -> Denoiser:
    """The guided denoiser: one U-Net call on [x; x] against [uncond; cond], then `guided`.

    `cond` holds the unconditional embeddings first when guided, as Pipeline.encode makes them.
    """

    def denoise(x: np.ndarray, t: int) -> np.ndarray:
        sample = np.concatenate([x, x]) if is_guided(guidance_scale) else x
        return guided(unet(sample, t, cond), guidance_scale)

    return denoise


def embedded_denoiser(
    unet: GuidedNoisePredictor, cond: np.ndarray, guidance_scale: float
) -> Denoiser:
    """The denoiser of a guidance-distilled U-Net: one pass of batch N, w as an input (Meng et
    al. 2023); `cond` holds only the prompts' embeddings."""

    def denoise(x: np.ndarray, t: int) -> np.ndarray:
        return unet(x, t, cond, np.full(len(x), guidance_scale, dtype=np.float32))

    return denoise
