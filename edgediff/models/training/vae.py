"""VAE stage: AutoencoderKL on random crops of shapes images; then the latent scale is measured."""

from __future__ import annotations

from pathlib import Path

import torch

from edgediff.data import shapes
from edgediff.models.training.loop import Stage, cosine_lr, run_stage
from edgediff.models.training.recipes import VaeRecipe


def vae_loss(vae, images: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """L1 + L2 reconstruction per pixel plus `kl_weight` × KL per latent element."""
    posterior = vae.encode(images).latent_dist
    recon = vae.decode(posterior.sample()).sample
    err = recon - images
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return err.abs().mean() + err.pow(2).mean() + kl_weight * kl


def train_vae(vae, recipe: VaeRecipe, work_dir: Path, seed: int, progress: bool = True) -> None:
    """Train `vae` in place (resuming from `work_dir`), then store its measured scaling factor."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)
    size = shapes.IMAGE_SIZE

    def step(k: int) -> float:
        for group in opt.param_groups:
            group["lr"] = recipe.lr * cosine_lr(k, recipe.steps, warmup=50)
        images, _, _ = shapes.batch(seed, k * recipe.batch_size, recipe.batch_size)
        x = torch.from_numpy(images)
        if recipe.crop < size:
            top, left = torch.randint(0, size - recipe.crop + 1, (2,)).tolist()
            x = x[:, :, top : top + recipe.crop, left : left + recipe.crop]
        loss = vae_loss(vae, x, recipe.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    run_stage(
        Stage("vae", recipe.steps, step, {"vae": vae, "opt": opt}, recipe.checkpoint_every),
        work_dir,
        seed,
        progress,
    )
    vae.eval()
    vae.register_to_config(scaling_factor=measure_scaling_factor(vae, seed))


@torch.no_grad()
def measure_scaling_factor(vae, seed: int, n: int = 1024) -> float:
    """1 / std of sampled latents over fresh images, as Stable Diffusion's 0.18215 was found."""
    torch.manual_seed(seed)
    images, _, _ = shapes.batch(seed + 1, 0, n)
    latents = vae.encode(torch.from_numpy(images)).latent_dist.sample()
    return round(1.0 / latents.std().item(), 5)


@torch.no_grad()
def reconstruction_psnr(vae, seed: int, n: int = 256) -> float:
    """PSNR (dB, images in [0, 1]) of the VAE's mean reconstruction on fresh images."""
    images, _, _ = shapes.batch(seed + 2, 0, n)
    x = torch.from_numpy(images)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((recon - x) / 2).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(1.0 / mse)).item()
