"""LoRA files fused into a checkpoint before export, so the bundle runs them at no cost.

diffusers' loader reads both formats people bring (diffusers/PEFT, and kohya/A1111's
`lora_unet_...`/`lora_te_...` keys, converted on load). Before anything is fused, every LoRA
weight is matched to a layer of the checkpoint by name and shape; one that does not fit is
refused with the names that did not match, rather than half applied.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgediff.errors import ExportError

# An A1111 <lora:name:0.8> weight above this is a typo more often than a choice.
MAX_LORA_SCALE = 10.0
# What follows the layer a LoRA weight adapts, in PEFT's names (an adapter name may sit between).
_LORA_SUFFIX = re.compile(r"\.(lora_A|lora_B)(\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file and the scale it is fused at."""

    path: Path
    scale: float = 1.0


def parse_lora(text: str) -> LoraSpec:
    """FILE or FILE:SCALE (the scale a finite number in [-10, 10]) as a LoraSpec."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")):
        try:
            scale = float(tail)
        except ValueError:
            raise ExportError(
                f"--lora '{text}': '{tail}' is not a scale", "Write FILE or FILE:SCALE, e.g. a:0.8"
            ) from None
        path = head
    if not math.isfinite(scale) or abs(scale) > MAX_LORA_SCALE:
        raise ExportError(f"--lora '{text}': scale must be a number in [-10, 10], got {scale}")
    if not Path(path).is_file():
        raise ExportError(f"LoRA file '{path}' does not exist")
    return LoraSpec(Path(path), scale)


def _layer_shape(module: Any) -> tuple[int, int] | None:
    """(in, out) features of a layer a LoRA can adapt, or None."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, torch.nn.Conv2d):
        return module.in_channels, module.out_channels
    return None


def _peft_names(state_dict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A LoRA's weights per model ("unet", "text_encoder"; anything else under its prefix), in
    PEFT's names (`layer.lora_A.weight`), as diffusers renames them when it loads them."""
    from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    by_model: dict[str, dict[str, Any]] = {}
    for key, weight in state_dict.items():
        prefix, _, rest = key.partition(".")
        by_model.setdefault(prefix, {})[rest] = weight
    converters = {
        "unet": convert_unet_state_dict_to_peft,
        "text_encoder": convert_state_dict_to_peft,
    }
    for prefix, weights in by_model.items():
        if prefix in converters and not all(_LORA_SUFFIX.search(k) for k in weights):
            by_model[prefix] = converters[prefix](weights)
    return by_model


def mismatches(pipeline: Any, state_dict: dict[str, Any]) -> list[str]:
    """The LoRA weights (in PEFT's names) that name no layer of the pipeline's U-Net or text
    encoder, or whose shape does not fit the layer they name."""
    models = {"unet": pipeline.unet, "text_encoder": pipeline.text_encoder}
    bad = []
    for prefix, weights in _peft_names(state_dict).items():
        for key, weight in weights.items():
            match = _LORA_SUFFIX.search(key)
            if match is None or prefix not in models:
                bad.append(f"{prefix}.{key}")
                continue
            try:
                shape = _layer_shape(models[prefix].get_submodule(key[: match.start()]))
            except AttributeError:
                shape = None
            if shape is None:
                bad.append(f"{prefix}.{key}")
                continue
            features_in, features_out = shape
            down = match.group(1) == "lora_A"
            fits = weight.shape[1] == features_in if down else weight.shape[0] == features_out
            if not fits:
                bad.append(f"{prefix}.{key} {tuple(weight.shape)}")
    return bad


def _read(pipeline: Any, lora: LoraSpec, checkpoint: Path) -> tuple[dict, Any]:
    """A LoRA file's weights in diffusers' names and its alphas, checked against the model."""
    try:
        state_dict, alphas = pipeline.lora_state_dict(str(lora.path))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(
            f"'{lora.path}' is not a LoRA file diffusers can read: {first}",
            "Pass a diffusers/PEFT or kohya (A1111) LoRA .safetensors",
        ) from None
    bad = mismatches(pipeline, state_dict)
    if bad:
        shown = ", ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
        raise ExportError(
            f"LoRA '{lora.path.name}' does not fit '{checkpoint.name}': {len(bad)} of its "
            f"{len(state_dict)} weights match no layer: {shown}",
            "Use a LoRA trained for this base model",
        )
    return state_dict, alphas


@contextlib.contextmanager
def _no_loading_bars() -> Iterator[None]:
    """diffusers' and transformers' per-file loading bars off: one export is one bar."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    libraries = [
        lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()
    ]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()


def fuse_into_copy(checkpoint: Path, loras: list[LoraSpec], into: Path) -> Path:
    """A copy of the checkpoint at `into` with every LoRA fused at its scale (a weighted sum of
    their updates, as diffusers' set_adapters + fuse_lora makes it)."""
    with _no_loading_bars():
        return _fuse_into_copy(checkpoint, loras, into)


def _fuse_into_copy(checkpoint: Path, loras: list[LoraSpec], into: Path) -> Path:
    import torch
    from diffusers import StableDiffusionPipeline

    try:
        pipeline = StableDiffusionPipeline.from_pretrained(
            checkpoint, safety_checker=None, requires_safety_checker=False
        )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"cannot load '{checkpoint}' to fuse LoRAs into: {first}") from None
    # Every file read and matched before any is loaded: loading wraps the layers it adapts.
    states = [_read(pipeline, lora, checkpoint) for lora in loras]
    names = [f"lora{i}" for i in range(len(loras))]
    with torch.no_grad():
        for name, (state_dict, alphas) in zip(names, states, strict=True):
            pipeline.load_lora_weights(state_dict, network_alphas=alphas, adapter_name=name)
        pipeline.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
        pipeline.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipeline.unload_lora_weights()
    pipeline.save_pretrained(into, safe_serialization=True)
    # edgediff's own side files (a student's distillation record, say) go with the copy.
    for extra in checkpoint.iterdir():
        if extra.is_file() and not (into / extra.name).exists():
            shutil.copy2(extra, into / extra.name)
    return into
