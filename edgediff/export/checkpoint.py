"""Read a diffusers SD checkpoint: check it is supported, load it in float32, extract configs."""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgediff.bundle.schema import DISTILLATION_FILE, ModelConfig
from edgediff.errors import ExportError
from edgediff.export.components import SOURCE
from edgediff.quiet import captured_output, first_line

if TYPE_CHECKING:
    import torch

# model_index.json entries a supported checkpoint has, and the classes edgediff can export.
_REQUIRED: dict[str, tuple[str, ...] | None] = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,  # any diffusers scheduler: its config becomes a DDIM config
}
_CONFIG_FILES = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "scheduler": "scheduler_config.json",
}
_SUPPORTED = "edgediff exports Stable Diffusion 1.x/2.x-style text-to-image checkpoints"


@dataclass
class LoadedCheckpoint:
    """A checkpoint loaded in float32 with everything the bundle needs from it."""

    path: Path
    model: ModelConfig
    scheduler: dict[str, Any]
    tokenizer: Any
    modules: dict[str, torch.nn.Module]  # "vae", "text_encoder" (the U-Net loads where exported)
    configs: dict[str, str]  # config.json text per checkpoint sub-folder
    upcast_attention: bool
    guidance_embedded: bool  # a U-Net that takes the guidance scale (edgediff distill)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(
            f"cannot read '{path}' ({first_line(e)})", "Re-save the checkpoint"
        ) from None
    if not isinstance(data, dict):
        raise ExportError(f"'{path}' is not a JSON object", "Re-save the checkpoint")
    return data


def _with_defaults(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers config as the class will see it: constructor defaults for keys left out."""
    params = inspect.signature(cls.__init__).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return {**defaults, **config}


def check_checkpoint(path: str | Path) -> dict[str, dict[str, Any]]:
    """Check a folder is a supported SD checkpoint from its JSON files alone; return its configs."""
    path = Path(path)
    if not path.exists():
        raise ExportError(
            f"checkpoint folder '{path}' does not exist",
            "Pass a diffusers pipeline folder (the one holding model_index.json)",
        )
    if not path.is_dir():
        raise ExportError(
            f"'{path}' is a file, not a checkpoint folder",
            "Pass a diffusers pipeline folder (the one holding model_index.json)",
        )
    if not (path / "model_index.json").is_file():
        raise ExportError(
            f"'{path}' is not a diffusers pipeline folder (it has no model_index.json)",
            "Save the model with StableDiffusionPipeline.save_pretrained(FOLDER) and export that",
        )
    index = _read_json(path / "model_index.json")
    for name, classes in _REQUIRED.items():
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or not entry[1]:
            raise ExportError(
                f"'{path}' has no {name} in model_index.json, so it is not a Stable Diffusion "
                "checkpoint",
                _SUPPORTED,
            )
        if classes is not None and entry[1] not in classes:
            raise ExportError(
                f"the {name} of '{path}' is a {entry[1]}, not a {' or '.join(classes)}", _SUPPORTED
            )
        if not (path / name).is_dir():
            raise ExportError(
                f"'{path}' has no {name}/ folder although model_index.json lists one",
                "Copy the whole checkpoint folder",
            )
    configs = {}
    for name, filename in _CONFIG_FILES.items():
        file = path / name / filename
        if not file.is_file():
            raise ExportError(f"'{file}' is missing", "Copy the whole checkpoint folder")
        configs[name] = _read_json(file)
    _check_supported(path, configs)
    return configs


def _check_supported(path: Path, configs: dict[str, dict[str, Any]]) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    unet = _with_defaults(UNet2DConditionModel, configs["unet"])
    vae = _with_defaults(AutoencoderKL, configs["vae"])
    text = CLIPTextConfig.from_dict(configs["text_encoder"])
    latent = vae["latent_channels"]
    if unet["in_channels"] not in (latent, 2 * latent + 1):
        raise ExportError(
            f"the U-Net of '{path}' takes {unet['in_channels']} input channels but the VAE makes "
            f"{latent}-channel latents (a depth or other conditioned model?)",
            f"Text-to-image U-Nets ({latent} channels) and inpainting ones ({2 * latent + 1}: "
            "latents, mask, masked image) are supported",
        )
    if unet["out_channels"] != latent:
        raise ExportError(
            f"the U-Net of '{path}' predicts {unet['out_channels']} channels for "
            f"{latent}-channel latents",
            _SUPPORTED,
        )
    if unet.get("time_cond_proj_dim") is not None and not (path / DISTILLATION_FILE).is_file():
        # edgediff distill's students say what they were distilled for; other guidance-
        # embedding U-Nets (LCM) are sampled by schedulers the runtime does not have.
        raise ExportError(
            f"the U-Net of '{path}' has time_cond_proj_dim={unet['time_cond_proj_dim']} "
            f"(a guidance-embedding / LCM U-Net) and no {DISTILLATION_FILE} from edgediff distill",
            _SUPPORTED,
        )
    for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type"):
        if unet.get(key) is not None:
            raise ExportError(
                f"the U-Net of '{path}' has {key}={unet[key]!r} (SDXL / unCLIP-style extra "
                "conditioning inputs)",
                _SUPPORTED,
            )
    if not isinstance(unet["sample_size"], int):
        raise ExportError(
            f"the U-Net of '{path}' has a non-square sample_size {unet['sample_size']}", _SUPPORTED
        )
    cross = unet["cross_attention_dim"]
    if cross != text.hidden_size:
        raise ExportError(
            f"the U-Net of '{path}' attends to {cross}-wide text embeddings but the text encoder "
            f"makes {text.hidden_size}-wide ones",
            _SUPPORTED,
        )
    if vae.get("shift_factor") not in (None, 0, 0.0):
        raise ExportError(
            f"the VAE of '{path}' has shift_factor={vae['shift_factor']} (an SD3/Flux-style VAE)",
            _SUPPORTED,
        )


def ddim_scheduler_config(pipe: Any) -> dict[str, Any]:
    """The checkpoint's scheduler config as a DDIMScheduler config, as the pipeline would use it."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    accepted = set(inspect.signature(DDIMScheduler.__init__).parameters) - {"self"}
    # pipe.scheduler.config already carries the pipeline's load-time fixes (steps_offset=1,
    # clip_sample=False for old configs).
    reduced = {k: v for k, v in dict(pipe.scheduler.config).items() if k in accepted}
    ddim = DDIMScheduler.from_config(reduced)
    # Keys the source scheduler lacked took DDIM's defaults; passing the DDIM scheduler through
    # the pipeline applies the same fixes to those defaults (e.g. a PNDM config has no
    # clip_sample, and DDIM's default True is what the pipeline turns off).
    components = {**pipe.components, "scheduler": ddim}
    components.pop("requires_safety_checker", None)
    fixed = StableDiffusionPipeline(**components, requires_safety_checker=False).scheduler.config
    config = {k: v for k, v in dict(fixed).items() if k in accepted}
    # JSON round trip: tuples -> lists, so the manifest and the file hold the same values.
    return {"_class_name": "DDIMScheduler", **json.loads(json.dumps(config))}


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Check and load a checkpoint in float32 (eval mode) and extract what the bundle records."""
    path = Path(path)
    check_checkpoint(path)
    with captured_output():
        # Importing the pipelines prints transformers' optional-dependency notes.
        import torch
        from diffusers import StableDiffusionPipeline, UNet2DConditionModel

        try:
            # The U-Net's 3.4 GB (SD 1.5) are loaded where it is exported, perhaps in another
            # process; here a weightless copy gives the pipeline its config.
            with torch.device("meta"):
                placeholder = UNet2DConditionModel.from_config(
                    UNet2DConditionModel.load_config(str(path), subfolder="unet")
                )
            pipe = StableDiffusionPipeline.from_pretrained(
                str(path),
                unet=placeholder,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                local_files_only=True,
            )
        except Exception as e:
            raise ExportError(
                f"could not load the checkpoint '{path}': {first_line(e)}",
                "Check that the folder was saved completely by save_pretrained",
            ) from e
        scheduler = ddim_scheduler_config(pipe)
    modules = {name: getattr(pipe, name).float().eval() for name in ("vae", "text_encoder")}
    unet, vae, text = pipe.unet.config, pipe.vae.config, pipe.text_encoder.config
    tokenizer = pipe.tokenizer
    max_length = int(tokenizer.model_max_length)
    if max_length != text.max_position_embeddings:
        raise ExportError(
            f"the tokenizer of '{path}' pads prompts to {max_length} tokens but the text encoder "
            f"takes {text.max_position_embeddings}",
            "Set model_max_length in tokenizer/tokenizer_config.json to the text encoder's "
            "max_position_embeddings",
        )
    vae_factor = 2 ** (len(vae.block_out_channels) - 1)
    unet_factor = 2 ** (len(unet.block_out_channels) - 1)
    model = ModelConfig(
        latent_channels=int(vae.latent_channels),
        scaling_factor=float(vae.scaling_factor),
        vae_scale_factor=vae_factor,
        sample_size=int(unet.sample_size),
        max_text_length=max_length,
        text_embed_dim=int(unet.cross_attention_dim),
        unet_scale_factor=unet_factor,
        unet_in_channels=None if unet.in_channels == vae.latent_channels else unet.in_channels,
    )
    configs = {
        "unet": pipe.unet.to_json_string(),
        "vae": pipe.vae.to_json_string(),
        "text_encoder": text.to_json_string(),
    }
    return LoadedCheckpoint(
        path=path,
        model=model,
        scheduler=scheduler,
        tokenizer=tokenizer,
        modules=modules,
        configs=configs,
        upcast_attention=bool(getattr(unet, "upcast_attention", False)),
        guidance_embedded=getattr(unet, "time_cond_proj_dim", None) is not None,
    )


def load_component(path: str | Path, component: str) -> torch.nn.Module:
    """The float32 torch module a component is exported from, loaded on its own (eval mode);
    "vae_decoder_tiny" loads the AutoencoderTiny folder `path` itself."""
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextModel

    if component == "vae_decoder_tiny":
        return AutoencoderTiny.from_pretrained(str(path), local_files_only=True).float().eval()
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
    sub = SOURCE[component]
    module = classes[sub].from_pretrained(str(path), subfolder=sub, local_files_only=True)
    return module.float().eval()


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 over the checkpoint's files: relative path, size and content, sorted by path."""
    root = Path(path)
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    digest = hashlib.sha256()
    for rel in files:
        file = root / rel
        digest.update(rel.encode("utf-8") + b"\0" + file.stat().st_size.to_bytes(8, "little"))
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
