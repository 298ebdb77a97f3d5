"""Distillation recipes: how long each stage trains, and with what optimiser settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgediff.errors import InputError


@dataclass(frozen=True)
class DistillRecipe:
    """Steps of the guidance stage and of each progressive round, and shared settings.

    `seconds_per_step` (measured on 2 CPU cores for the shapes model) only feeds the ETA.
    """

    name: str
    description: str
    guidance_steps: int
    round_steps: int
    batch_size: int = 64
    lr: float = 1e-4
    # The guidance projection starts at zero and must grow to the size of the time embedding
    # it is added to; at the fine-tuning rate it barely moved in 2,000 steps (the student then
    # guided like the teacher at w ~ 1.5 when asked for 3), so it learns this much faster.
    new_layer_lr_scale: float = 50.0
    warmup: int = 100
    ema_decay: float = 0.999
    checkpoint_every: int = 200
    tiny_steps: int = 2000  # the tiny decoder's training steps (0: none)
    # Its channels, and its blocks at each level below full resolution and at full resolution.
    # The shapes VAE's own decoder is only 16 channels wide at 64x64, so a decoder as wide as
    # TAESD's (64) or even 32 channels is barely faster than it: 16 wide, three blocks a level
    # and none at full resolution (~47 k parameters) is 3.7-5x faster on ORT CPU.
    tiny_width: int = 16
    tiny_blocks: int = 3
    tiny_full_res_blocks: int = 0
    # The decoder reads latents / this (its config's scaling_factor, as diffusers divides by
    # it): TAESD's input clamp, 3 tanh(x / 3), flattens |x| > 3, and the shapes latents reach
    # 7 at their 0.999 quantile (encoder's and students' alike).
    tiny_latent_scale: float = 2.0
    tiny_lr: float = 2e-3
    # (latent, VAE image) pairs decoded once and sampled from: decoding a fresh batch with the
    # VAE cost 2-3x the tiny decoder's own training step. Memory: pool x 3 x H x W x 2 bytes.
    tiny_pool: int = 4096
    teacher_pool: int = 512  # teacher samples made once for --data teacher
    teacher_pool_steps: int = 8  # DDIM steps the teacher samples them with
    # guidance, round, tiny: measured alone on 2 cores with the shapes preset (2,000 guidance
    # steps in 33.7 min; the 2 -> 1 round in 36.3 min; the tiny decoder's 2,000 steps and pool
    # in about 9.5 min).
    seconds_per_step: tuple[float, float, float] = (1.01, 1.09, 0.28)

    def settings(self) -> dict:
        """The fields that shape the U-Nets' weights: a resumed run must have the same ones."""
        fields = asdict(self)
        for other in ("description", "seconds_per_step", *self.tiny_settings()):
            fields.pop(other)
        return fields

    def tiny_settings(self) -> dict:
        """The fields that shape the tiny decoder's weights (its stage checks them on its own,
        so retuning it keeps the finished U-Net rounds)."""
        return {k: v for k, v in asdict(self).items() if k.startswith("tiny_")}

    def estimated_seconds(self, rounds: int) -> float:
        """Rough wall time of the guidance stage, `rounds` progressive rounds and the decoder."""
        guidance, round_, tiny = self.seconds_per_step
        return (
            self.guidance_steps * guidance
            + rounds * self.round_steps * round_
            + self.tiny_steps * tiny
        )


RECIPES: dict[str, DistillRecipe] = {
    r.name: r
    for r in [
        DistillRecipe(
            name="shapes",
            description="the shipped model: guidance, then 8 -> 4 -> 2 -> 1 steps",
            guidance_steps=2000,
            round_steps=2000,
        ),
        DistillRecipe(
            name="quick",
            description="minutes: few steps of each stage (a smoke test, not a model)",
            guidance_steps=30,
            round_steps=30,
            batch_size=8,
            lr=2e-4,
            warmup=5,
            ema_decay=0.9,
            checkpoint_every=10,
            tiny_steps=30,
            tiny_width=8,
            tiny_blocks=1,
            tiny_pool=64,
            teacher_pool=16,
            teacher_pool_steps=4,
            seconds_per_step=(0.2, 0.2, 0.1),
        ),
    ]
}


def get_recipe(name: str) -> DistillRecipe:
    """The recipe called `name`, or an error listing the known ones."""
    if name not in RECIPES:
        raise InputError(
            f"unknown distillation preset '{name}'", f"Choose one of: {', '.join(RECIPES)}"
        )
    return RECIPES[name]
