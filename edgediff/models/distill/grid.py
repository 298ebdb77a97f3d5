"""The DDIM timestep grid students are distilled on: diffusers' DDIMScheduler, the reference the
runtime's numpy scheduler equals step for step."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DdimGrid:
    """ᾱ for every training timestep, the ᾱ after the last step, and the step grids."""

    config: dict
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: float

    @classmethod
    def from_config(cls, scheduler_config: dict) -> DdimGrid:
        """The grid of a checkpoint's scheduler config (its spacing, offset and betas)."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(scheduler_config)
        return cls(
            dict(scheduler.config),
            scheduler.alphas_cumprod.clone().float(),
            float(scheduler.final_alpha_cumprod),
        )

    @property
    def train_timesteps(self) -> int:
        """How many timesteps the model was trained on (1000 for SD)."""
        return int(self.config["num_train_timesteps"])

    def timesteps(self, steps: int) -> list[int]:
        """The timesteps a `steps`-step DDIM run visits, first to last."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.config)
        scheduler.set_timesteps(steps)
        return [int(t) for t in scheduler.timesteps]

    def previous(self, t: torch.Tensor, steps: int) -> torch.Tensor:
        """The timestep a `steps`-step run goes to from t (negative after the last step)."""
        return t - self.train_timesteps // steps

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ at timesteps t; the final ᾱ where t < 0 (after the last step)."""
        clamped = self.alphas_cumprod[t.clamp(min=0)]
        return torch.where(t >= 0, clamped, torch.full_like(clamped, self.final_alpha_cumprod))
