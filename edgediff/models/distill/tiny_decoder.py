"""A tiny decoder (TAESD-style: Conv/ReLU/Upsample only) distilled from the checkpoint's VAE.

It is diffusers' AutoencoderTiny, trained on the VAE's own latents to reproduce the VAE
decoder's images, and it takes diffusion latents as TAESD does (scaling factor 1), so
`pipe.vae = tiny` works in diffusers too; the export scales the runtime's decoder input back.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from edgediff.models.distill.data import LatentStream
from edgediff.models.distill.recipes import DistillRecipe
from edgediff.models.training.loop import EMA, Stage, cosine_lr, optimizer_step, run_stage
from edgediff.models.training.parallel import SINGLE, Parallel


def tiny_decoder_for(vae, width: int):
    """An AutoencoderTiny whose decoder upsamples as much as `vae` does, `width` channels wide
    (its encoder is minimal: only the decoder is distilled and exported)."""
    from diffusers import AutoencoderTiny

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    levels = int(math.log2(factor)) + 1
    return AutoencoderTiny(
        in_channels=vae.config.in_channels,
        out_channels=vae.config.out_channels,
        encoder_block_out_channels=(8,) * levels,
        decoder_block_out_channels=(width,) * levels,
        latent_channels=vae.config.latent_channels,
        num_encoder_blocks=(1,) * levels,
        num_decoder_blocks=(2,) * (levels - 1) + (1,),
    )


def decoder_parameters(tiny) -> int:
    """Parameters of the decoder half, the part that ships."""
    return sum(p.numel() for p in tiny.decoder.parameters())


def train_tiny_decoder(
    tiny,
    vae,
    stream: LatentStream,
    recipe: DistillRecipe,
    work_dir: Path,
    seed: int,
    progress: bool = True,
    parallel: Parallel = SINGLE,
) -> list[float]:
    """Fit the tiny decoder to the VAE decoder's images of the stream's latents (L1 + L2)."""
    vae.eval().requires_grad_(False)
    decoder = tiny.decoder.train().requires_grad_(True)
    opt = torch.optim.AdamW(decoder.parameters(), lr=recipe.tiny_lr, weight_decay=0.0)
    ema = EMA(decoder, recipe.ema_decay)
    scaling = vae.config.scaling_factor

    def step(k: int) -> float:
        for group in opt.param_groups:
            group["lr"] = recipe.tiny_lr * cosine_lr(k, recipe.tiny_steps, recipe.warmup)
        latents, _ = stream(k, recipe.batch_size)
        latents = latents[parallel.rows(len(latents))].to(parallel.device)
        with torch.no_grad():
            target = vae.decode(latents / scaling).sample.clamp(-1, 1)
        image = decoder(latents)
        loss = torch.nn.functional.mse_loss(image, target) + (image - target).abs().mean()
        return optimizer_step(opt, loss, decoder, ema, parallel)

    state = {"decoder": decoder, "opt": opt, "ema": ema}
    stage = Stage("tiny-decoder", recipe.tiny_steps, step, state, recipe.checkpoint_every)
    losses = run_stage(stage, work_dir, seed, progress, parallel)
    decoder.load_state_dict(ema.shadow)
    tiny.eval().requires_grad_(False)
    return losses
