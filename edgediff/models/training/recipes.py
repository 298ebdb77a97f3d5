"""Training recipes: the architecture, the steps of each stage, the optimiser settings."""

from __future__ import annotations

from dataclasses import dataclass

from edgediff.errors import InputError


@dataclass(frozen=True)
class VaeRecipe:
    """AutoencoderKL: L1 + L2 reconstruction and a small KL term, on random crops."""

    steps: int
    batch_size: int = 64
    crop: int = 32  # the VAE is fully convolutional, so 32×32 crops train it for 64×64
    lr: float = 1e-3
    kl_weight: float = 1e-4
    checkpoint_every: int = 200


@dataclass(frozen=True)
class ClipRecipe:
    """Text encoder trained contrastively against a small image encoder (the CLIP recipe)."""

    steps: int
    batch_size: int = 128
    lr: float = 1e-3
    embed_dim: int = 64
    checkpoint_every: int = 200


@dataclass(frozen=True)
class UnetRecipe:
    """U-Net on VAE latents; captions dropped for classifier-free guidance; EMA weights."""

    steps: int
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    # The contrastively trained text encoder is fine-tuned with the U-Net at this share of its
    # learning rate (0 freezes it): CLIP's loss only shapes the pooled token, while the U-Net
    # attends to every token.
    text_encoder_lr_scale: float = 0.25
    checkpoint_every: int = 200


@dataclass(frozen=True)
class Recipe:
    """The whole recipe; `seconds_per_step` (measured on 2 CPU cores) only feeds the ETA."""

    name: str
    description: str
    preset: str
    vae: VaeRecipe
    clip: ClipRecipe
    unet: UnetRecipe
    seconds_per_step: tuple[float, float, float] = (0.75, 0.4, 0.85)

    def estimated_seconds(self) -> float:
        """Rough wall time of the whole recipe on a 2-core machine."""
        steps = (self.vae.steps, self.clip.steps, self.unet.steps)
        return sum(s * t for s, t in zip(steps, self.seconds_per_step, strict=True))


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            name="shapes-64",
            description="the shipped default model (about 2 hours on 2 CPU cores)",
            preset="shapes",
            vae=VaeRecipe(steps=1000),
            clip=ClipRecipe(steps=400),
            unet=UnetRecipe(steps=7000),
        ),
        Recipe(
            name="shapes-quick",
            description="a few minutes: same architecture, few steps (a smoke test, not a model)",
            preset="shapes",
            vae=VaeRecipe(steps=60, batch_size=32),
            clip=ClipRecipe(steps=40, batch_size=64),
            unet=UnetRecipe(steps=120, batch_size=32, warmup=20),
            seconds_per_step=(0.4, 0.3, 0.45),
        ),
    ]
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`, or an error listing the known ones."""
    if name not in RECIPES:
        raise InputError(
            f"unknown training preset '{name}'", f"Choose one of: {', '.join(RECIPES)}"
        )
    return RECIPES[name]
