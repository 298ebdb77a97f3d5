"""The four exported components: thin torch wrappers, their I/O contract, example and test inputs.

The I/O names follow optimum's ONNX Stable Diffusion export so other tools can load a bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgediff.bundle.schema import ModelConfig

# torch.export specialises dims whose example size is 1, so examples use batch 2; diffusers'
# Upsample2D branches on `batch >= 64`, which a bounded batch Dim decides at trace time (the
# branch only adds a .contiguous(), so the exported graph is valid for any batch).
EXAMPLE_BATCH = 2
MAX_TRACE_BATCH = 32


@dataclass(frozen=True)
class IOSpec:
    """Input and output names of a component's ONNX graph and the names of its dynamic axes."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dims: dict[str, dict[int, str]]


_BHW = {0: "batch", 2: "height", 3: "width"}
_LATENT = {0: "batch", 2: "latent_height", 3: "latent_width"}

IO: dict[str, IOSpec] = {
    "text_encoder": IOSpec(
        ("input_ids",),
        ("last_hidden_state", "pooler_output"),
        {
            "input_ids": {0: "batch"},
            "last_hidden_state": {0: "batch"},
            "pooler_output": {0: "batch"},
        },
    ),
    "unet": IOSpec(
        ("sample", "timestep", "encoder_hidden_states"),
        ("out_sample",),
        {"sample": _BHW, "encoder_hidden_states": {0: "batch"}, "out_sample": _BHW},
    ),
    # A guidance-distilled U-Net takes the guidance scale, one per image (edgediff distill).
    "unet_guided": IOSpec(
        ("sample", "timestep", "encoder_hidden_states", "guidance"),
        ("out_sample",),
        {
            "sample": _BHW,
            "encoder_hidden_states": {0: "batch"},
            "guidance": {0: "batch"},
            "out_sample": _BHW,
        },
    ),
    "vae_decoder": IOSpec(
        ("latent_sample",), ("sample",), {"latent_sample": _LATENT, "sample": _BHW}
    ),
    # A tiny decoder (edgediff distill) takes the same input as the VAE decoder.
    "vae_decoder_tiny": IOSpec(
        ("latent_sample",), ("sample",), {"latent_sample": _LATENT, "sample": _BHW}
    ),
    "vae_encoder": IOSpec(
        ("sample",), ("latent_parameters",), {"sample": _BHW, "latent_parameters": _LATENT}
    ),
}

# Which checkpoint sub-folder each component's torch module comes from.
SOURCE = {
    "text_encoder": "text_encoder",
    "unet": "unet",
    "vae_decoder": "vae",
    "vae_encoder": "vae",
}


class TextEncoderWrapper(torch.nn.Module):
    """CLIPTextModel -> (last_hidden_state, pooler_output)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode token ids."""
        out = self.model(input_ids=input_ids, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class UNetWrapper(torch.nn.Module):
    """UNet2DConditionModel -> noise (or v) prediction; one float timestep for the whole batch."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """Predict for a batch of latents at one timestep."""
        return self.model(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class GuidedUNetWrapper(torch.nn.Module):
    """A guidance-embedded UNet2DConditionModel -> its guided prediction in one pass; the
    guidance scale is embedded inside the graph, as diffusers' LCM pipelines embed it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        guidance: torch.Tensor,
    ) -> torch.Tensor:
        """Predict for a batch of latents at one timestep, each image at its own guidance."""
        from edgediff.models.distill.math import guidance_embedding

        embedding = guidance_embedding(guidance, self.model.config.time_cond_proj_dim)
        return self.model(
            sample, timestep, encoder_hidden_states, timestep_cond=embedding, return_dict=False
        )[0]


class VaeDecoderWrapper(torch.nn.Module):
    """AutoencoderKL.decode: latents (already divided by scaling_factor) -> images, ~[-1, 1]."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        """Decode latents."""
        return self.model.decode(latent_sample, return_dict=False)[0]


class TinyDecoderWrapper(torch.nn.Module):
    """AutoencoderTiny.decode on the VAE decoder's input (latents / the VAE's scaling factor):
    it takes latents / its own factor, so the graph rescales them first."""

    def __init__(self, model: torch.nn.Module, vae_scaling_factor: float):
        super().__init__()
        self.model = model
        self.rescale = vae_scaling_factor / model.config.scaling_factor

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        """Decode latents."""
        return self.model.decode(latent_sample * self.rescale, return_dict=False)[0]


class VaeEncoderWrapper(torch.nn.Module):
    """AutoencoderKL.encode: images -> the diagonal Gaussian's parameters (mean, logvar)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """Encode images."""
        return self.model.encode(sample, return_dict=False)[0].parameters


_WRAPPERS = {
    "text_encoder": TextEncoderWrapper,
    "unet": UNetWrapper,
    "unet_guided": GuidedUNetWrapper,
    "vae_decoder": VaeDecoderWrapper,
    "vae_encoder": VaeEncoderWrapper,
}


def graph_kind(component: str, guidance_embedded: bool) -> str:
    """Which graph a component exports to: its own, or "unet_guided" for a U-Net that takes
    the guidance scale as an input."""
    return "unet_guided" if component == "unet" and guidance_embedded else component


def wrap(kind: str, model: torch.nn.Module, config: ModelConfig | None = None) -> torch.nn.Module:
    """The export wrapper of a graph kind around its loaded torch module, in eval mode (the
    tiny decoder's needs the bundle's `config` for its scaling factor)."""
    if kind == "vae_decoder_tiny":
        if config is None:
            raise ValueError("the tiny decoder's wrapper needs the model config")
        return TinyDecoderWrapper(model.eval(), config.scaling_factor).eval()
    return _WRAPPERS[kind](model.eval()).eval()


def dynamic_shapes(component: str, geo: ModelConfig) -> dict[str, Any]:
    """torch.export dynamic shapes: batch and spatial axes free (multiples where needed)."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_TRACE_BATCH)
    if component == "text_encoder":
        return {"input_ids": {0: batch}}
    if component in ("unet", "unet_guided"):
        # The U-Net concatenates skip connections, so latents must divide by its downsampling.
        h, w = Dim("latent_h", min=1), Dim("latent_w", min=1)
        sample = {0: batch, 2: geo.unet_scale_factor * h, 3: geo.unet_scale_factor * w}
        shapes = {"sample": sample, "timestep": None, "encoder_hidden_states": {0: batch}}
        return {**shapes, "guidance": {0: batch}} if component == "unet_guided" else shapes
    if component in ("vae_decoder", "vae_decoder_tiny"):
        latent = {0: batch, 2: Dim("latent_height", min=1), 3: Dim("latent_width", min=1)}
        return {"latent_sample": latent}
    h, w = Dim("latent_height", min=1), Dim("latent_width", min=1)
    return {"sample": {0: batch, 2: geo.vae_scale_factor * h, 3: geo.vae_scale_factor * w}}


def example_inputs(component: str, geo: ModelConfig) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: batch 2 and distinct odd spatial factors, so no axis specialises."""
    b, c = EXAMPLE_BATCH, geo.latent_channels
    if component == "text_encoder":
        return (torch.zeros(b, geo.max_text_length, dtype=torch.int64),)
    if component in ("unet", "unet_guided"):
        f = geo.unet_scale_factor
        inputs = (
            torch.randn(b, geo.unet_sample_channels, 3 * f, 5 * f),
            torch.tensor([500.0]),
            torch.randn(b, geo.max_text_length, geo.text_embed_dim),
        )
        return (*inputs, torch.full((b,), 3.0)) if component == "unet_guided" else inputs
    if component in ("vae_decoder", "vae_decoder_tiny"):
        return (torch.randn(b, c, 3, 5),)
    return (torch.rand(b, 3, 3 * geo.vae_scale_factor, 5 * geo.vae_scale_factor) * 2 - 1,)


def sample_inputs(
    component: str,
    geo: ModelConfig,
    batch: int,
    latent_hw: tuple[int, int],
    seed: int,
    input_ids: np.ndarray | None = None,
    timestep: float = 500.0,
) -> dict[str, np.ndarray]:
    """Named numpy inputs for one check of a graph kind (text encoder: pass tokenized ids)."""
    rng = np.random.default_rng(seed)
    c, (h, w) = geo.latent_channels, latent_hw
    if component == "text_encoder":
        if input_ids is None:
            raise ValueError("the text encoder is checked on tokenized prompts: pass input_ids")
        return {"input_ids": np.asarray(input_ids, dtype=np.int64)}
    if component in ("unet", "unet_guided"):
        feeds = {
            "sample": rng.standard_normal((batch, geo.unet_sample_channels, h, w), np.float32),
            "timestep": np.array([timestep], dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal(
                (batch, geo.max_text_length, geo.text_embed_dim), dtype=np.float32
            ),
        }
        if component == "unet_guided":
            feeds["guidance"] = rng.uniform(1.0, 8.0, batch).astype(np.float32)
        return feeds
    if component in ("vae_decoder", "vae_decoder_tiny"):
        return {"latent_sample": rng.standard_normal((batch, c, h, w), dtype=np.float32)}
    shape = (batch, 3, h * geo.vae_scale_factor, w * geo.vae_scale_factor)
    return {"sample": rng.uniform(-1.0, 1.0, shape).astype(np.float32)}


# Prompts for the text encoder's checks: ordinary, empty, and longer than any max_length.
VERIFY_PROMPTS = (
    ("a red circle at the top left",),
    ("", "a photo of an astronaut riding a horse on a mountain lake at sunset " * 8, "blue square"),
)


def verification_inputs(
    component: str, geo: ModelConfig, prompt_ids: list[np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """The two checks export runs: batch 1 at the default size, batch 3 at another size."""
    default = (geo.default_latent, geo.default_latent)
    return [
        sample_inputs(component, geo, 1, default, seed=1, input_ids=prompt_ids[0], timestep=981.0),
        sample_inputs(
            component, geo, 3, geo.other_latent(), seed=2, input_ids=prompt_ids[1], timestep=21.0
        ),
    ]
