"""Memory modes, and what a generation costs in each: estimated from weights and shapes.

The estimate is a model fitted to measured peaks (resident set size, ORT CPU, fused attention,
the session settings of backends.onnxruntime), not a bound: `benchmarks/memory_sd15.py`
measures SD 1.5 sizes and a test holds it within 30 % of what the shipped model measures.
Activations are counted in full-resolution feature maps of a component's widest first stage
(the U-Net's and the VAE's block_out_channels[0]): a component's peak holds a fixed number of
them whatever the image size, once attention no longer holds the N² scores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import kind_of
from edgediff.errors import InputError

# fast: every session and what its runs allocated stays; balanced: sessions stay, each run's
# activations go back after it; low: each component is loaded for its stage and released.
MEMORY_MODES = ("low", "balanced", "fast")
DEFAULT_MEMORY = "balanced"

_FLOAT = 4
# A process that imported the runtime and ONNX Runtime and loaded a tokenizer, before any model.
BASE_BYTES = 92 * 2**20
# Full-resolution feature maps alive at each kind's peak, fitted on SD 1.5 at 256² and 512².
ACTIVATION_MAPS = {"unet": 80.0, "vae_decoder": 10.0, "vae_encoder": 8.0}
# A tiled VAE's mid-block, run whole at latent resolution where it holds attention
# (backends.vae_split), in maps of its widest stage: 1.32 GiB for SD 1.5's decoder at 256²
# latents (512 channels, 128 MiB a map).
MID_BLOCK_MAPS = 10.5
# A tile of a VAE whose GroupNorms share the whole image's statistics (backends.ort_groupnorm):
# each norm also sums its input and picks a branch, which holds more maps at once than
# ONNX Runtime's fused norm. SD 1.5's decoder, 512² tiles: 2.19 GiB above the loaded model at
# 1024² and 2.32 GiB at 2048² (17.5 and 18.5 maps; plain tiles 9.9), fitted at 1024².
SYNCED_TILE_MAPS = 17.5
# The text encoder's, in token embeddings (batch × tokens × width): a few MB.
TEXT_ENCODER_MAPS = 50.0
# A decoder without a diffusers config (the distilled tiny decoder): its first stage's width.
_DEFAULT_WIDTH = 64
# glibc's largest dynamic mmap threshold on 64-bit: buffers this big are mmapped and go back
# to the system when freed.
LARGE_BUFFER_BYTES = 32 * 2**20


def check_memory_mode(memory: object) -> str:
    """`memory` if it names a mode, else a one-line error."""
    if memory not in MEMORY_MODES:
        raise InputError(
            f"unknown memory mode {memory!r}", f"Use one of: {', '.join(MEMORY_MODES)}"
        )
    return memory  # type: ignore[return-value]


@dataclass(frozen=True)
class MemoryEstimate:
    """What each component of one generation holds, in bytes: weights and peak activations."""

    weights: dict[str, int]
    activations: dict[str, int]

    def peak(self, memory: str) -> int:
        """Estimated peak resident bytes of the process in a memory mode."""
        memory = check_memory_mode(memory)
        if memory == "low":
            return BASE_BYTES + max(self.weights[c] + self.activations[c] for c in self.weights)
        kept = BASE_BYTES + sum(self.weights.values())
        if memory == "balanced":
            return kept + max(self.activations.values())
        return kept + sum(self.activations.values())


def estimate_memory(
    bundle: Bundle,
    files: dict[str, tuple[str, ...]],
    images: int,
    height: int,
    width: int,
    unet_batch: int,
    vae_tile: int | None = None,
    synced_tiles: bool = False,
) -> MemoryEstimate:
    """The estimate of one generation of `images` images at height × width whose U-Net runs
    on `unet_batch` latents a call (2× images under classifier-free guidance). `files` are the
    bundle files each component loads; `vae_tile` the VAE's tile side in pixels when tiled,
    `synced_tiles` whether its tiles share GroupNorm statistics (the ONNX Runtime backend)."""
    config = bundle.manifest.model
    f = config.vae_scale_factor
    vae_pixels = (
        height * width if vae_tile is None else min(height, vae_tile) * min(width, vae_tile)
    )
    weights, activations = {}, {}
    for component, component_files in files.items():
        weights[component] = sum(_bytes(bundle, rel) for rel in component_files)
        kind = kind_of(component)
        if kind == "text_encoder":
            tokens = config.max_text_length * config.text_embed_dim * _FLOAT
            activations[component] = int(TEXT_ENCODER_MAPS * unet_batch * tokens)
            continue
        component_config = _component_config(bundle, component)
        count = ACTIVATION_MAPS[kind]
        if vae_tile is not None and synced_tiles and _has_group_norms(component_config):
            count = SYNCED_TILE_MAPS
        maps = count * _first_width(component_config) * _FLOAT
        if kind == "unet":
            activations[component] = int(maps * unet_batch * (height // f) * (width // f))
            continue
        activations[component] = int(maps * images * vae_pixels)
        if vae_tile is not None:  # the whole mid-block runs before or after the tiles
            mid = MID_BLOCK_MAPS * _mid_attention_width(component_config) * _FLOAT
            whole = int(mid * images * (height // f) * (width // f))
            activations[component] = max(activations[component], whole)
    return MemoryEstimate(weights, activations)


def large_vae_buffers(bundle: Bundle) -> bool:
    """Whether one full-resolution feature map of the bundle's VAE decoder at its default
    image size is LARGE_BUFFER_BYTES or more: then it runs best without ONNX Runtime's arena
    (backends.onnxruntime.session_options has the numbers). SD 1.5: 128 MiB; shipped: 256 KiB."""
    config = bundle.manifest.model
    side = config.sample_size * config.vae_scale_factor
    width = _first_width(_component_config(bundle, "vae_decoder"))
    return width * side * side * _FLOAT >= LARGE_BUFFER_BYTES


def _bytes(bundle: Bundle, rel: str) -> int:
    """A file's size as the manifest records it, else as the disk says (0 if it is missing:
    loading it will say so)."""
    record = bundle.manifest.files.get(rel)
    if record is not None:
        return record.bytes
    path = bundle.path(rel)
    return path.stat().st_size if path.is_file() else 0


def _component_config(bundle: Bundle, component: str) -> dict[str, Any]:
    """A component's diffusers config in the bundle; {} where it has none or it is unreadable."""
    path = bundle.path(f"{component}/config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _first_width(config: dict[str, Any]) -> int:
    """Channels of a component's first stage, from its diffusers config."""
    try:
        return int(config["block_out_channels"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return _DEFAULT_WIDTH


def _has_group_norms(config: dict[str, Any]) -> bool:
    """Whether a VAE normalises with GroupNorm (diffusers' AutoencoderKL; the distilled tiny
    decoder does not, so its tiles run plain)."""
    return config.get("_class_name") == "AutoencoderKL"


def _mid_attention_width(config: dict[str, Any]) -> int:
    """Channels of a VAE's mid-block if it holds attention (diffusers' AutoencoderKL config),
    else 0: the distilled tiny decoder and VAEs exported without it have none."""
    attends = config.get("mid_block_add_attention", True)
    if config.get("_class_name") != "AutoencoderKL" or not attends:
        return 0
    try:
        return int(config["block_out_channels"][-1])
    except (KeyError, IndexError, TypeError, ValueError):
        return 0


def available_bytes() -> float:
    """Memory the system can give this process now (MemAvailable); inf where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return float("inf")
