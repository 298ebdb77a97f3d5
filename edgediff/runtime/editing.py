"""Image-to-image and inpainting as array math: where a run starts, and the blend that keeps
what a mask keeps (Meng et al. 2022, SDEdit; the latent blend of diffusers' inpainting with a
text-to-image U-Net).
"""

from __future__ import annotations

import numpy as np

from edgediff.errors import InputError
from edgediff.runtime.samplers import StepConstraint
from edgediff.runtime.schedulers import DDIMScheduler


def strength_start(steps: int, strength: float) -> int:
    """How many of `steps` timesteps an image-to-image run skips: it runs the last
    int(steps × strength) of them, as diffusers' get_timesteps counts."""
    runs = min(int(steps * strength), steps)
    if runs < 1:
        raise InputError(
            f"strength {strength:g} of {steps} steps leaves no step to run",
            "Raise strength or steps so that steps × strength >= 1",
        )
    return steps - runs


def noised_start(
    scheduler: DDIMScheduler,
    image_latents: np.ndarray,
    noise: np.ndarray,
    steps: int,
    start: int,
    pure_noise: bool = False,
) -> np.ndarray:
    """The latents a run that starts at timestep index `start` begins from: the image's latents
    noised to that timestep, or (`pure_noise`, inpainting at strength 1) the noise alone."""
    if pure_noise:
        return noise * np.float32(scheduler.init_noise_sigma)
    t = int(scheduler.timesteps(steps)[start])
    return scheduler.add_noise(image_latents, noise, np.full(len(noise), t))


def inpaint_blend(
    scheduler: DDIMScheduler,
    mask: np.ndarray,
    image_latents: np.ndarray,
    noise: np.ndarray,
    steps: int,
    start: int,
) -> StepConstraint:
    """After step i, outside the mask (`mask` 0 at latent resolution), the image's latents
    noised to the timestep the next step starts from, and after the last step the latents
    themselves: the U-Net only ever repaints where the mask is 1."""
    timesteps = scheduler.timesteps(steps)[start:]
    keep = np.float32(1.0) - mask

    def blend(i: int, x: np.ndarray) -> np.ndarray:
        known = image_latents
        if i < len(timesteps) - 1:
            next_t = int(timesteps[i + 1])
            known = scheduler.add_noise(image_latents, noise, np.full(len(noise), next_t))
        return keep * known + mask * x

    return blend
