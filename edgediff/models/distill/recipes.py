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
    tiny_steps: int = 1500  # the tiny decoder's training steps (0: none)
    tiny_width: int = 32  # its channels: ~90 k decoder parameters for the shapes VAE
    tiny_lr: float = 1e-3
    teacher_pool: int = 512  # teacher samples made once for --data teacher
    teacher_pool_steps: int = 8  # DDIM steps the teacher samples them with
    # guidance, round, tiny: measured alone on 2 cores with the shapes preset (2,000 guidance
    # steps in 33.7 min; the 2 -> 1 round in 36.3 min; the tiny decoder at 1.5 s/step).
    seconds_per_step: tuple[float, float, float] = (1.01, 1.09, 1.5)

    def settings(self) -> dict:
        """The fields that shape the weights: a resumed run must have the same ones."""
        fields = asdict(self)
        for informative in ("description", "seconds_per_step"):
            fields.pop(informative)
        return fields

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
            tiny_width=16,
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
