"""The bundle's manifest as typed, frozen records: the one schema every stage reads and writes.

A bundle is a folder laid out like diffusers'/optimum's ONNX pipelines:

    manifest.json  model_index.json  scheduler/scheduler_config.json  tokenizer/...
    text_encoder/model.onnx  unet/model.onnx  vae_decoder/model.onnx  vae_encoder/model.onnx

Every file is listed in the manifest with its sha256 and size; paths never leave the folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edgediff import __version__

MANIFEST = "manifest.json"
FORMAT = "edgediff-bundle"
FORMAT_VERSION = 1
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
REQUIRED_COMPONENTS = ("text_encoder", "unet", "vae_decoder")
# A bundle may hold more than one model of a kind: "unet.steps-2" is the U-Net distilled for 2
# steps, "vae_decoder.tiny" a small decoder. Such variants are components of their own (models
# by precision, engines, quantisation), named KIND.VARIANT.
VARIANT_SEPARATOR = "."


def kind_of(component: str) -> str:
    """The kind a component name stands for: "unet" for "unet" and for "unet.steps-2"."""
    return component.split(VARIANT_SEPARATOR, 1)[0]


# The tiny decoder edgediff distill makes: a second decoder, same input and output.
TINY_DECODER = f"vae_decoder{VARIANT_SEPARATOR}tiny"


def steps_variant(steps: int) -> str:
    """The component name of the U-Net distilled for `steps` DDIM steps."""
    return f"unet{VARIANT_SEPARATOR}steps-{steps}"


# Precisions a component's model may have: float exports, then Q/DQ models.
FLOAT_PRECISIONS = ("fp32", "fp16")
QUANTIZED_PRECISIONS = ("int8", "fp8")
PRECISIONS = FLOAT_PRECISIONS + QUANTIZED_PRECISIONS


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, numpy dtype name, shape with named symbolic dims."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Verification:
    """How a model compared with its reference (max errors over all checked shapes)."""

    max_abs_error: float
    max_rel_error: float
    rel_tolerance: float
    passed: bool
    shapes: tuple[dict[str, Any], ...] = ()
    # What it was compared with: the checkpoint's PyTorch module (export), or the bundle's
    # fp32 model (fp16 models made by `edgediff build`).
    reference: str = "PyTorch"


QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class QuantSettings:
    """How one precision is quantised (ONNX Runtime's static Q/DQ quantiser settings)."""

    precision: str
    quant_type: str  # onnxruntime.quantization.QuantType member, for weights and activations
    calibrate_method: str  # onnxruntime.quantization.CalibrationMethod member
    activation_scales: str  # "calibrator" or "amax"
    per_channel: bool = True
    symmetric: bool = True  # weights always; activations too unless activation_type says uint8
    quantize_bias: bool = False
    op_types: tuple[str, ...] = QUANTIZED_OPS
    activation_type: str | None = None  # another QuantType for activations (None: quant_type)
    reduce_range: bool = False  # 7-bit weights
    target: str = "tensorrt"  # the runtime the Q/DQ placement is made for: tensorrt or cpu


@dataclass(frozen=True)
class QuantizationRecord:
    """How a Q/DQ model was made from the fp32 one, and what it measured against it."""

    quantizer: str  # "onnxruntime.quantization 1.23.2"
    settings: QuantSettings
    calibration_prompts_sha256: str
    kept_in_float: tuple[str, ...]  # layer groups left unquantised
    psnr_db: float
    target_psnr_db: float
    measured_on: str  # "final latents" or "images"
    sensitivity: str  # the bundle file holding the per-layer table and the keep search


# Beside a distilled checkpoint's model_index.json: its DistillationRecord as JSON.
DISTILLATION_FILE = "distillation.json"


@dataclass(frozen=True)
class DistillationRecord:
    """What a distilled U-Net was made for (edgediff distill), copied from its checkpoint."""

    method: str  # "guidance" (CFG folded in) or "progressive" (fewer steps, guidance folded in)
    guidance_embedded: bool  # takes the guidance scale as an input; one pass of batch N a step
    guidance_range: tuple[float, float]  # the scales it was trained on
    steps: tuple[int, ...]  # the DDIM step counts it was distilled for
    teacher_unet_sha256: str  # the teacher U-Net's weights file
    data: str  # "shapes" (the training set) or "teacher" (the teacher's own samples)
    negative_prompts: bool = False  # whether it learnt from negative prompts (it does not yet)


@dataclass(frozen=True)
class ModelEntry:
    """One ONNX file of a component at one precision."""

    file: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: tuple[str, ...] = ()
    verification: Verification | None = None
    quantization: QuantizationRecord | None = None  # for Q/DQ models
    distillation: DistillationRecord | None = None  # for distilled U-Nets

    @property
    def files(self) -> tuple[str, ...]:
        """The ONNX file and its external data files."""
        return (self.file, *self.external_data)


@dataclass(frozen=True)
class Component:
    """A pipeline component: its models by precision and which one loads by default."""

    default: str
    models: dict[str, ModelEntry]


@dataclass(frozen=True)
class ModelConfig:
    """What the runtime needs to know about the model family, beyond the graphs."""

    latent_channels: int
    scaling_factor: float
    vae_scale_factor: int
    sample_size: int
    max_text_length: int
    text_embed_dim: int
    # The U-Net halves the latent (levels - 1) times; graphs are traced for sizes it divides.
    unet_scale_factor: int = 1
    # An inpainting U-Net's input channels: latents, mask and the masked image's latents
    # (2 × latent + 1); None: a text-to-image U-Net, which takes the latents alone.
    unet_in_channels: int | None = None

    @property
    def inpainting(self) -> bool:
        """Whether the U-Net takes a mask and masked-image latents beside the latents."""
        return self.unet_in_channels is not None and self.unet_in_channels != self.latent_channels

    @property
    def unet_sample_channels(self) -> int:
        """Channels of the U-Net's `sample` input."""
        return self.unet_in_channels or self.latent_channels

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this many pixels."""
        return self.vae_scale_factor * self.unet_scale_factor

    @property
    def default_image_size(self) -> int:
        """Height and width the U-Net was configured for, in pixels."""
        return self.sample_size * self.vae_scale_factor

    @property
    def default_latent(self) -> int:
        """The default latent size rounded down to a multiple the U-Net accepts."""
        f = self.unet_scale_factor
        return max(f, self.sample_size // f * f)

    def other_latent(self) -> tuple[int, int]:
        """A second, non-square latent size (height, width), for checks beyond the default."""
        f = self.unet_scale_factor
        return max(f, self.default_latent // 2 // f * f), self.default_latent + f


@dataclass(frozen=True)
class TokenizerConfig:
    """The `tokenizers` JSON the runtime uses, and how prompts are padded."""

    file: str
    max_length: int
    pad_token_id: int
    original_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoraRecord:
    """A LoRA fused into the bundle's U-Net and text encoder at export."""

    file: str  # the file's name, as given
    sha256: str
    scale: float


@dataclass(frozen=True)
class Calibration:
    """Component inputs recorded while the fp32 pipeline sampled calibration prompts."""

    prompts: int
    prompts_sha256: str
    steps: int
    guidance: float
    seed: int
    batch_size: int
    timesteps: tuple[int, ...]
    # component -> input name -> .npy file holding every recorded call, stacked on axis 0.
    inputs: dict[str, dict[str, str]]
    height: int | None = None  # image size sampled; None: the model's default
    width: int | None = None

    @property
    def files(self) -> list[str]:
        """Every array file of the recording."""
        return [f for arrays in self.inputs.values() for f in arrays.values()]


@dataclass(frozen=True)
class EngineEntry:
    """A TensorRT engine built from one of the bundle's ONNX models, and what makes it valid."""

    component: str
    precision: str  # the precision it was built for (fp16, int8, fp8)
    file: str
    onnx: str  # the ONNX file it was built from
    onnx_sha256: str
    flavour: str  # "tensorrt" (classic) or "rtx" (TensorRT-RTX)
    tensorrt_version: str  # with its flavour: "trt-10.3.0", "rtx-1.7.1.116"
    # Compute capabilities it runs on: the building GPU's for classic TensorRT ("8.7" on Orin),
    # the targets it was built for ahead of time for TensorRT-RTX ("8.6", "8.9", "12.0").
    targets: tuple[str, ...]
    gpu_name: str | None  # the GPU that built it; None for a TensorRT-RTX build without one
    # input name -> {"min": [...], "opt": [...], "max": [...]}
    profile: dict[str, dict[str, list[int]]]
    flags: dict[str, Any]  # builder settings: strongly typed, fp16, memory limits, ...
    key: str  # sha256 over everything above that makes the engine valid
    build_seconds: float = 0.0


@dataclass(frozen=True)
class FileRecord:
    """Size and hash of one file in the bundle."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """Everything a bundle says about itself."""

    model: ModelConfig
    scheduler: dict[str, Any]
    tokenizer: TokenizerConfig
    components: dict[str, Component]
    files: dict[str, FileRecord]
    source: dict[str, Any] = field(default_factory=dict)
    engines: tuple[EngineEntry, ...] = ()
    calibration: Calibration | None = None
    # DDIM steps to generate with when none are asked for (a distilled bundle's best trade-off);
    # None: the runtime's default.
    recommended_steps: int | None = None
    # The guidance scale to generate with when none is asked for (distilled students may guide
    # best at another scale than their teacher); None: the runtime's default.
    recommended_guidance: float | None = None
    # LoRAs fused into the weights at export, in the order given.
    loras: tuple[LoraRecord, ...] = ()
    edgediff_version: str = __version__
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The manifest as the JSON text stored in manifest.json."""
        data = {"format": FORMAT, **asdict(self)}
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    def referenced_paths(self) -> list[str]:
        """Every path the manifest names, used or not, so each can be checked to stay inside."""
        paths = list(self.files)
        paths.append(self.tokenizer.file)
        paths.extend(self.tokenizer.original_files)
        for component in self.components.values():
            for entry in component.models.values():
                paths.extend(entry.files)
        if self.calibration is not None:
            paths.extend(self.calibration.files)
        for engine in self.engines:
            paths.extend((engine.file, engine.onnx))
        return paths
