"""Samplers: functions over a denoiser, in the manner of k-diffusion's sampling.py.

A denoiser maps (latents x_t, timestep t) to the noise prediction eps(x_t, t); guidance, the
backend and any recording all live inside it. A sampler walks a scheduler's timesteps with it.
Another sampler (a distilled student's, say) is another function here, not a Pipeline edit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from edgediff.runtime.schedulers import DDIMScheduler

Denoiser = Callable[[np.ndarray, int], np.ndarray]
StepCallback = Callable[[int, int, np.ndarray], Any]  # (step index, steps, latents)
# (step index, latents after it) -> the latents the next step starts from (inpainting's blend)
StepConstraint = Callable[[int, np.ndarray], np.ndarray]


def sample_ddim(
    denoiser: Denoiser,
    x: np.ndarray,
    scheduler: DDIMScheduler,
    steps: int,
    eta: float = 0.0,
    rng: np.random.Generator | None = None,
    callback: StepCallback | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    start: int = 0,
    constraint: StepConstraint | None = None,
) -> np.ndarray:
    """DDIM (Song et al. 2020, eq. 12): x_{t-1} from x_t and eps(x_t, t) at each timestep.

    `eta` > 0 adds fresh noise each step, drawn from `rng`; `callback` sees the latents after
    each step; `progress` wraps the timesteps (a tqdm, say). `start` skips the first timesteps
    of the `steps`-step schedule (image-to-image begins part-way, at x noised to the timestep
    it starts from); `constraint` replaces the latents after each step (inpainting).
    """
    if eta > 0 and rng is None:
        raise ValueError("eta > 0 draws noise each step: pass rng")
    timesteps = scheduler.timesteps(steps)[start:]
    walk = timesteps if progress is None else progress(timesteps)
    for i, t in enumerate(walk):
        eps = denoiser(x, int(t))
        noise = rng.standard_normal(x.shape, dtype=np.float32) if eta > 0 else None
        x = scheduler.step(eps, int(t), x, steps, eta=eta, noise=noise)
        if constraint is not None:
            x = constraint(i, x)
        if callback is not None:
            callback(i, len(timesteps), x)
    return x


SAMPLERS: dict[str, Callable[..., np.ndarray]] = {"ddim": sample_ddim}
