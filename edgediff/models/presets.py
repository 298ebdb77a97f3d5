"""Model presets as plain config dicts, and random-weight checkpoints built from them.

Random weights give honest latency and memory at real sizes (they do not depend on weight
values) and let tests compare edgediff with diffusers on architectures of every shape.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgediff.errors import InputError


@dataclass(frozen=True)
class Preset:
    """One Stable-Diffusion-shaped architecture: configs for each component and the scheduler."""

    name: str
    description: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any]
    max_text_length: int = 77
    extra: dict[str, Any] = field(default_factory=dict)


_SD_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="tiny",
            description="tiny random SD (epsilon, conv attention projections, VAE factor 4)",
            unet=dict(
                sample_size=16,
                in_channels=4,
                out_channels=4,
                block_out_channels=(32, 64),
                layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=8,
                norm_num_groups=8,
                use_linear_projection=False,
            ),
            vae=dict(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=(16, 32, 32),
                down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3,
                layers_per_block=1,
                norm_num_groups=8,
                sample_size=64,
                scaling_factor=0.5,
            ),
            text_encoder=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
            ),
            scheduler=_SD_SCHEDULER,
        ),
        Preset(
            name="tiny-v",
            description="tiny random SD 2.x-style (v-prediction, linear projections, 3 levels, "
            "32-token prompts, trailing spacing, zero-terminal-SNR betas)",
            unet=dict(
                sample_size=8,
                in_channels=4,
                out_channels=4,
                block_out_channels=(16, 32, 32),
                layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=48,
                attention_head_dim=(2, 4, 4),
                norm_num_groups=8,
                use_linear_projection=True,
            ),
            vae=dict(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=(8, 16, 16, 16),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=1,
                norm_num_groups=8,
                sample_size=64,
                scaling_factor=0.8,
            ),
            text_encoder=dict(
                hidden_size=48,
                intermediate_size=96,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=32,
                hidden_act="gelu",
            ),
            scheduler={
                **_SD_SCHEDULER,
                "prediction_type": "v_prediction",
                "timestep_spacing": "trailing",
                "rescale_betas_zero_snr": True,
            },
            max_text_length=32,
        ),
        Preset(
            name="shapes",
            description="the shipped shapes model: 64×64 images, 16×16×4 latents, 16-token "
            "prompts, cross-attention at 8×8 and 4×4 (trained by `edgediff train`)",
            unet=dict(
                sample_size=16,
                in_channels=4,
                out_channels=4,
                block_out_channels=(32, 64, 64),
                layers_per_block=1,
                # No attention at 16×16: it would double the step time for little gain here.
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=64,
                attention_head_dim=4,
                norm_num_groups=16,
            ),
            vae=dict(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=(16, 32, 64),
                down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3,
                layers_per_block=1,
                norm_num_groups=8,
                sample_size=64,
                mid_block_add_attention=False,
                scaling_factor=1.0,  # measured after VAE training
            ),
            text_encoder=dict(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=16,
                hidden_act="quick_gelu",
            ),
            scheduler={**_SD_SCHEDULER, "timestep_spacing": "trailing"},
            max_text_length=16,
        ),
        Preset(
            name="sd15",
            description="Stable Diffusion 1.5 sizes with random weights (860M-parameter U-Net)",
            unet=dict(
                sample_size=64,
                in_channels=4,
                out_channels=4,
                block_out_channels=(320, 640, 1280, 1280),
                layers_per_block=2,
                down_block_types=(
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D",
                    "DownBlock2D",
                ),
                up_block_types=(
                    "UpBlock2D",
                    "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D",
                ),
                cross_attention_dim=768,
                attention_head_dim=8,
                norm_num_groups=32,
            ),
            vae=dict(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2,
                norm_num_groups=32,
                sample_size=512,
                scaling_factor=0.18215,
            ),
            text_encoder=dict(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                vocab_size=49408,
            ),
            scheduler=_SD_SCHEDULER,
        ),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or an error listing the known ones."""
    if name not in PRESETS:
        raise InputError(f"unknown preset '{name}'", f"Choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_random_pipeline(preset: str | Preset, seed: int = 0):
    """A diffusers StableDiffusionPipeline with the preset's architecture and random weights."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from edgediff.models.clip_vocab import BOS, EOS, write_clip_vocab

    p = get_preset(preset) if isinstance(preset, str) else preset
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_clip_vocab(tmp)
        tokenizer = CLIPTokenizer(
            vocab=str(vocab), merges=str(merges), model_max_length=p.max_text_length
        )
    text_cfg = {"vocab_size": len(tokenizer), **p.text_encoder}
    text_cfg["max_position_embeddings"] = p.max_text_length
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **text_cfg,
                bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
                eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(**p.unet)
        vae = AutoencoderKL(**p.vae)
    finally:
        torch.random.set_rng_state(generator_state)
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(**p.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipeline, out: Path, extra_files: dict[str, str] | None = None) -> Path:
    """Save a diffusers pipeline or model (safetensors) to `out`, with any extra text files
    beside it, replacing `out` only once complete."""
    # Written beside the target and swapped in, so an interrupted run never leaves half a folder.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    try:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        for name, text in (extra_files or {}).items():
            Path(tmp, name).write_text(text, encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_random_checkpoint(
    preset: str, out_dir: str | Path, seed: int = 0, force: bool = False
) -> Path:
    """Write a random-weight checkpoint in the diffusers folder layout (safetensors)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise InputError(f"'{out}' exists and is not empty", "Choose a new folder or pass --force")
    save_pipeline(build_random_pipeline(preset, seed), out)
    return out
