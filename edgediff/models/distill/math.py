"""The distillation targets as pure tensor math (Meng et al. 2023; Salimans & Ho 2022).

Notation: ᾱ_t is the scheduler's cumulative alpha, α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t), so a noisy
latent is z_t = α_t x + σ_t ε. Every function takes ᾱ per sample and broadcasts it over C×H×W.
"""

from __future__ import annotations

import math

import torch


def _col(alpha_bar: torch.Tensor) -> torch.Tensor:
    return alpha_bar.reshape(-1, 1, 1, 1)


def guidance_embedding(guidance: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale w, as diffusers' LCM pipelines feed
    `timestep_cond`: of 1000 (w − 1), so w = 1 (no guidance) embeds like timestep 0."""
    w = (guidance.reshape(-1).float() - 1.0) * 1000.0
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=w.device)
    freqs = torch.exp(steps * -(math.log(10000.0) / (half - 1)))
    angles = w[:, None] * freqs[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(embedding, (0, dim % 2))


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance, ε_u + w (ε_c − ε_u), with one w per sample."""
    return eps_uncond + w.reshape(-1, 1, 1, 1) * (eps_cond - eps_uncond)


def x0_from_eps(z: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The clean latent a noise prediction implies: (z_t − σ_t ε) / α_t."""
    a = _col(alpha_bar)
    return (z - (1 - a).sqrt() * eps) / a.sqrt()


def ddim_step(
    z: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step (η = 0) from ᾱ_t to ᾱ_prev: α_prev x̂ + σ_prev ε."""
    x0 = x0_from_eps(z, eps, alpha_bar)
    prev = _col(alpha_bar_prev)
    return prev.sqrt() * x0 + (1 - prev).sqrt() * eps


def progressive_target(
    z_t: torch.Tensor, z_end: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_end: torch.Tensor
) -> torch.Tensor:
    """The x̃ that takes z_t to z_end in ONE DDIM step (Salimans & Ho, eq. 8):
    x̃ = (z_end − (σ_end/σ_t) z_t) / (α_end − (σ_end/σ_t) α_t)."""
    a_t, a_e = _col(alpha_bar_t), _col(alpha_bar_end)
    ratio = (1 - a_e).sqrt() / (1 - a_t).sqrt()
    return (z_end - ratio * z_t) / (a_e.sqrt() - ratio * a_t.sqrt())


def truncated_snr_weight(alpha_bar: torch.Tensor) -> torch.Tensor:
    """max(SNR, 1): Salimans & Ho's weighting of an x-space loss, so that the almost pure noise
    steps (SNR → 0) still count."""
    return (alpha_bar / (1 - alpha_bar)).clamp(min=1.0)
