"""A tiny decoder (TAESD-style: Conv/ReLU/Upsample only) distilled from the checkpoint's VAE.

It is diffusers' AutoencoderTiny, trained to reproduce the VAE decoder's images of the VAE's
own latents and of the students' samples. It takes diffusion latents divided by its config's
scaling_factor, as diffusers' pipelines give them, so `pipe.vae = tiny` works in diffusers too;
the export converts the runtime's decoder input (latents / the VAE's factor) to that.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from edgediff.models.distill.data import LatentStream
from edgediff.models.distill.recipes import DistillRecipe
from edgediff.models.training.loop import (
    EMA,
    Stage,
    cosine_lr,
    optimizer_step,
    run_stage,
    step_seed,
)
from edgediff.models.training.parallel import SINGLE, Parallel


def tiny_decoder_for(vae, recipe: DistillRecipe):
    """An AutoencoderTiny whose decoder upsamples as much as `vae` does, as wide and deep as
    the recipe says (its encoder is minimal: only the decoder is distilled and exported)."""
    from diffusers import AutoencoderTiny

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    levels = int(math.log2(factor)) + 1
    return AutoencoderTiny(
        in_channels=vae.config.in_channels,
        out_channels=vae.config.out_channels,
        encoder_block_out_channels=(8,) * levels,
        # AutoencoderTiny's decoder keeps one width throughout (its blocks do not change it)
        decoder_block_out_channels=(recipe.tiny_width,) * levels,
        latent_channels=vae.config.latent_channels,
        num_encoder_blocks=(1,) * levels,
        num_decoder_blocks=(recipe.tiny_blocks,) * (levels - 1) + (recipe.tiny_full_res_blocks,),
        scaling_factor=recipe.tiny_latent_scale,
    )


def decoder_parameters(tiny) -> int:
    """Parameters of the decoder half, the part that ships."""
    return sum(p.numel() for p in tiny.decoder.parameters())


@torch.no_grad()
def decoded_pool(
    vae, stream: LatentStream, size: int, batch: int, seed: int, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` latents of the stream and the VAE decoder's images of them (fp16, in [-1, 1]),
    the same on every run of a seed."""
    scaling = vae.config.scaling_factor
    latents, images = [], []
    chunks = range(math.ceil(size / batch))
    for k in tqdm(chunks, desc="tiny-decoder targets", disable=not progress, leave=False):
        torch.manual_seed(step_seed(seed, -1 - k))  # the stream's VAE samples its latents
        x0, _ = stream(k, batch)
        latents.append(x0.cpu())
        images.append(vae.decode(x0 / scaling).sample.clamp(-1, 1).half().cpu())
    return torch.cat(latents)[:size], torch.cat(images)[:size]


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
    pool: list[torch.Tensor] = []  # made at the first step, so a finished stage skips it

    def step(k: int) -> float:
        if not pool:
            show = progress and parallel.is_main
            pool.extend(decoded_pool(vae, stream, recipe.tiny_pool, recipe.batch_size, seed, show))
        latents, images = pool
        for group in opt.param_groups:
            group["lr"] = recipe.tiny_lr * cosine_lr(k, recipe.tiny_steps, recipe.warmup)
        # every process draws the same rows for step k (resumed or not), then takes its share
        draw = torch.Generator().manual_seed(step_seed(seed, k))
        rows = torch.randint(0, len(latents), (recipe.batch_size,), generator=draw)
        rows = rows[parallel.rows(recipe.batch_size)]
        target = images[rows].to(parallel.device).float()
        image = decoder(latents[rows].to(parallel.device) / tiny.config.scaling_factor)
        loss = torch.nn.functional.mse_loss(image, target) + (image - target).abs().mean()
        return optimizer_step(opt, loss, decoder, ema, parallel)

    state = {"decoder": decoder, "opt": opt, "ema": ema}
    stage = Stage("tiny-decoder", recipe.tiny_steps, step, state, recipe.checkpoint_every)
    losses = run_stage(stage, work_dir, seed, progress, parallel)
    decoder.load_state_dict(ema.shadow)
    tiny.eval().requires_grad_(False)
    return losses
