"""U-Net stage: denoising on VAE latents of shapes images, conditioned on the text encoder.

Loss: MSE to the scheduler's prediction target (epsilon or v), min-SNR-γ weighted (Hang et al.
2023) so the easy low-noise steps do not dominate. Captions are dropped to "" at the recipe's
rate so one model serves both halves of classifier-free guidance. The EMA of the weights is
what gets saved.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgediff.data import shapes
from edgediff.models.training.clip import tokenize
from edgediff.models.training.loop import EMA, Stage, cosine_lr, optimizer_step, run_stage
from edgediff.models.training.recipes import UnetRecipe


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """ᾱ_t for every training timestep, from the scheduler config the checkpoint ships."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
    config = {k: scheduler_config[k] for k in keys if k in scheduler_config}
    config["rescale_betas_zero_snr"] = scheduler_config.get("rescale_betas_zero_snr", False)
    return DDPMScheduler(**config).alphas_cumprod.clone()


def diffusion_loss(
    prediction: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    alpha_bar: torch.Tensor,
    prediction_type: str,
    min_snr_gamma: float,
) -> torch.Tensor:
    """Min-SNR-weighted MSE of a U-Net prediction; alpha_bar is ᾱ_t per sample."""
    a = alpha_bar.view(-1, 1, 1, 1)
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=min_snr_gamma)
    if prediction_type == "epsilon":
        target, weight = noise, clipped / snr
    elif prediction_type == "v_prediction":
        target, weight = a.sqrt() * noise - (1 - a).sqrt() * x0, clipped / (snr + 1)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    per_sample = (prediction - target).pow(2).mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def train_unet(
    unet,
    text_encoder,
    vae,
    tokenizer,
    scheduler_config: dict,
    recipe: UnetRecipe,
    work_dir: Path,
    seed: int,
    progress: bool = True,
) -> None:
    """Train `unet` (and fine-tune `text_encoder`) in place, then load their EMA weights."""
    ab = alphas_cumprod(scheduler_config)
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    scaling = vae.config.scaling_factor
    vae.eval().requires_grad_(False)
    tune_text = recipe.text_encoder_lr_scale > 0
    text_encoder.train(tune_text).requires_grad_(tune_text)
    unet.train()
    models = nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    groups = [{"params": list(unet.parameters()), "scale": 1.0}]
    if tune_text:
        groups.append(
            {"params": list(text_encoder.parameters()), "scale": recipe.text_encoder_lr_scale}
        )
    opt = torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=0.01)
    ema = EMA(models, recipe.ema_decay)
    data_seed = seed + 20_000

    def step(k: int) -> float:
        lr = recipe.lr * cosine_lr(k, recipe.steps, recipe.warmup)
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        images, _, captions = shapes.batch(data_seed, k * recipe.batch_size, recipe.batch_size)
        with torch.no_grad():
            x0 = vae.encode(torch.from_numpy(images)).latent_dist.sample() * scaling
        drop = torch.rand(len(captions)) < recipe.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        t = torch.randint(0, len(ab), (len(captions),))
        noise = torch.randn_like(x0)
        a = ab[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.set_grad_enabled(tune_text):
            cond = text_encoder(tokenize(tokenizer, captions)).last_hidden_state
        prediction = unet(noisy, t, cond).sample
        loss = diffusion_loss(prediction, x0, noise, ab[t], prediction_type, recipe.min_snr_gamma)
        return optimizer_step(opt, loss, models, ema)

    state = {"models": models, "opt": opt, "ema": ema}
    run_stage(
        Stage("unet", recipe.steps, step, state, recipe.checkpoint_every), work_dir, seed, progress
    )
    models.load_state_dict(ema.shadow)
    models.eval()
