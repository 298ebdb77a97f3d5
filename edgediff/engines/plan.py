"""What to build: per component, which ONNX, which builder flags, which profile, under which key.

Pure functions of the bundle, the request and the platform, so every decision here is tested
without TensorRT. The key is a hash of everything that makes an engine valid; an engine whose
recorded key equals the planned one is reused, anything else is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from edgediff.bundle.engine_compat import Platform, sm_of
from edgediff.bundle.flavours import Toolkit
from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import QUANTIZED_PRECISIONS, EngineEntry, ModelEntry, kind_of
from edgediff.engines.profiles import (
    Profile,
    SizeRange,
    Span,
    component_profile,
    dim_spans,
    profiled_components,
)
from edgediff.errors import EngineError, InputError

PRECISIONS = ("fp16", "int8", "fp8", "best")
QDQ_PRECISIONS = QUANTIZED_PRECISIONS
FP8_MIN_SM = 89  # FP8 tensor cores: Ada (8.9) and Hopper (9.0) onwards; Orin (8.7) has none
TURING_SM = 75  # TensorRT-RTX builds neither INT8 nor FP32 matrix multiplies for Turing
STRONGLY_TYPED_MIN_MAJOR = 10  # the first classic TensorRT with strongly typed networks
ENGINES_DIR = "engines"
DEFAULT_BATCH = Span(1, 1, 4)
# TensorRT-RTX's portable set: Ampere (datacenter and RTX), Ada, Blackwell RTX. Turing (7.5)
# only on request, because it forces fp16 throughout. Always set explicitly, so the recorded
# targets are exactly what the engine holds.
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")


@dataclass(frozen=True)
class BuildRequest:
    """What the user asked `edgediff build` for."""

    precision: str = "fp16"
    batch: Span = DEFAULT_BATCH
    size: SizeRange | None = None  # None: the model's default size, fixed
    static: bool = False
    workspace_mb: int | None = None
    tactic_memory_mb: int | None = None
    targets: tuple[str, ...] | None = None  # TensorRT-RTX compute capabilities; None: portable
    fp16_vae: bool = False  # strongly typed flavours: build the VAE decoder from an fp16 model


@dataclass(frozen=True)
class EnginePlan:
    """One engine to build: its source ONNX, its profile, where it runs, its builder flags."""

    component: str
    precision: str
    onnx: ModelEntry
    onnx_sha256: str
    profile: Profile
    toolkit: Toolkit
    targets: tuple[str, ...]  # compute capabilities it will run on
    gpu_name: str | None  # the building GPU (classic TensorRT); None when it does not matter
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> str:
        """Where the engine lives in the bundle."""
        return f"{ENGINES_DIR}/{self.toolkit.short}/{self.component}.{self.precision}.plan"

    @property
    def key(self) -> str:
        """sha256 over everything that makes the engine valid."""
        parts = {
            "component": self.component,
            "precision": self.precision,
            "onnx_sha256": self.onnx_sha256,
            "flavour": self.toolkit.flavour,
            "tensorrt_version": self.toolkit.qualified_version,
            "targets": list(self.targets),
            "gpu_name": self.gpu_name,
            "profile": _profile_json(self.profile),
            "flags": self.flags,
        }
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def entry(self, build_seconds: float) -> EngineEntry:
        """The manifest record of this plan, built."""
        return EngineEntry(
            component=self.component,
            precision=self.precision,
            file=self.file,
            onnx=self.onnx.file,
            onnx_sha256=self.onnx_sha256,
            flavour=self.toolkit.flavour,
            tensorrt_version=self.toolkit.qualified_version,
            targets=self.targets,
            gpu_name=self.gpu_name,
            profile=_profile_json(self.profile),
            flags=self.flags,
            key=self.key,
            build_seconds=round(build_seconds, 2),
        )


def _profile_json(profile: Profile) -> dict[str, dict[str, list[int]]]:
    return {
        name: dict(zip(("min", "opt", "max"), (list(s) for s in shapes), strict=True))
        for name, shapes in profile.items()
    }


def _source_digest(bundle: Bundle, model: ModelEntry) -> str:
    """The ONNX file's sha256; with external weights, the sha256 of all its files' hashes."""
    hashes = [bundle.manifest.files[f].sha256 for f in model.files]
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256(",".join(hashes).encode()).hexdigest()


def parse_targets(text: str) -> tuple[str, ...]:
    """'8.6,8.9,12.0' -> ('8.6', '8.9', '12.0'); anything else is a one-line error."""
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    for t in targets:
        major, _, minor = t.partition(".")
        if not (major.isdigit() and minor.isdigit() and len(minor) == 1):
            raise InputError(
                f"--targets '{text}' is not a comma list of compute capabilities",
                "e.g. --targets 8.6,8.9,12.0",
            )
    if not targets:
        raise InputError("--targets is empty", "e.g. --targets 8.6,8.9,12.0")
    return targets


def resolve_targets(request: BuildRequest, platform: Platform) -> tuple[str, ...]:
    """The compute capabilities the engines will run on: the GPU here for classic TensorRT,
    the requested (or portable) targets for TensorRT-RTX, each checked."""
    toolkit = platform.toolkit
    if not toolkit.builds_ahead_of_time:
        if request.targets is not None:
            raise InputError(
                f"--targets is for TensorRT-RTX; {toolkit.title} builds for the GPU it runs on",
                "Drop --targets and build on the device that runs the engines (or build for RTX "
                "GPUs with --flavour rtx)",
            )
        if platform.compute_capability is None:
            raise EngineError(
                f"{toolkit.title} builds engines on the GPU that will run them, and this machine "
                "has no usable NVIDIA GPU",
                "Build on that device (Jetson, datacenter GPU); for RTX GPUs, TensorRT-RTX "
                "builds without one: pip install 'edgediff[trt-rtx]' and --flavour rtx",
            )
        return (platform.compute_capability,)
    targets = request.targets or RTX_DEFAULT_TARGETS
    unknown = [t for t in targets if t not in platform.known_targets]
    if unknown:
        fix = f"Pick targets from {', '.join(platform.known_targets)}"
        if unknown[0] in ("8.7", "9.0", "10.0"):
            fix = (
                "Jetson Orin (8.7) and datacenter GPUs (9.0, 10.0) run classic TensorRT engines, "
                "built on the device: --flavour tensorrt"
            )
        raise InputError(
            f"{toolkit.title} cannot build for compute capability {unknown[0]} (it knows "
            f"{', '.join(platform.known_targets)})",
            fix,
        )
    return tuple(sorted(set(targets), key=sm_of))


def resolve_precision(
    bundle: Bundle, precision: str, platform: Platform, targets: tuple[str, ...]
) -> str:
    """The concrete precision to build for `targets`: 'best' becomes fp8, int8 or fp16; others
    are checked against the bundle and the targets."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}'", f"Use one of {', '.join(PRECISIONS)}")
    unet = bundle.manifest.components["unet"].models
    lowest = min(sm_of(t) for t in targets)
    # TensorRT-RTX has no INT8 (nor FP32) matrix multiply for Turing.
    fp16_only = platform.toolkit.flavour == "rtx" and lowest <= TURING_SM
    if precision == "best":
        if "fp8" in unet and lowest >= FP8_MIN_SM:
            return "fp8"
        return "int8" if "int8" in unet and not fp16_only else "fp16"
    if precision == "fp8" and lowest < FP8_MIN_SM:
        if platform.toolkit.builds_ahead_of_time:
            low = ", ".join(t for t in targets if sm_of(t) < FP8_MIN_SM)
            raise InputError(
                f"FP8 needs compute capability 8.9 or newer (Ada, Blackwell); the targets "
                f"include {low}",
                "Build --precision fp8 --targets 8.9,12.0, or --precision int8 for older GPUs",
            )
        raise InputError(
            f"FP8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); this "
            f"{platform.gpu_name} is {platform.compute_capability}",
            "Build --precision int8 (Jetson Orin and Ampere run INT8 Q/DQ) or fp16",
        )
    if precision in QDQ_PRECISIONS and fp16_only:
        raise InputError(
            f"{platform.toolkit.title} builds only fp16 engines for Turing (7.5), not {precision}",
            "Build --precision fp16 --fp16-vae for --targets 7.5, or leave 7.5 out of --targets",
        )
    if precision in QDQ_PRECISIONS and precision not in unet:
        raise InputError(
            f"the bundle has no {precision} U-Net to build a {precision} engine from",
            f"Make one first: edgediff calibrate {bundle.root} && "
            f"edgediff quantize {bundle.root} --precision {precision}",
        )
    return precision


def builder_flags(is_qdq: bool, precision: str, request: BuildRequest, toolkit: Toolkit) -> dict:
    """TensorRT builder settings for one engine (they are part of its key).

    Where TensorRT has strong typing, Q/DQ models build strongly typed, so the quantised layers
    run exactly as the graph says; TensorRT 11 and TensorRT-RTX build everything so, from fp16
    models for fp16. TensorRT 8.6 and 10 build float models with the FP16 flag.
    """
    flags: dict[str, Any] = {}
    if toolkit.always_strongly_typed or (is_qdq and toolkit.major >= STRONGLY_TYPED_MIN_MAJOR):
        flags["strongly_typed"] = True
    elif is_qdq:
        if precision == "fp8":
            raise InputError(
                f"FP8 engines need TensorRT {STRONGLY_TYPED_MIN_MAJOR} or newer",
                "Upgrade TensorRT, or build --precision int8",
            )
        flags.update(fp16=True, int8=True)  # TensorRT 8.6: explicit Q/DQ in a weakly typed net
    else:
        flags["fp16"] = True
    if request.workspace_mb is not None:
        flags["workspace_mb"] = request.workspace_mb
    if request.tactic_memory_mb is not None:
        flags["tactic_memory_mb"] = request.tactic_memory_mb
    return flags


VAE_KINDS = ("vae_decoder", "vae_encoder")


def source_models(
    bundle: Bundle, request: BuildRequest, precision: str, toolkit: Toolkit
) -> dict[str, str]:
    """Which of each component's models an engine is built from, by its precision key.

    "fp16" may name a model the bundle does not have yet (see `missing_fp16_models`): strongly
    typed flavours take precision from the graph, so fp16 kernels need an fp16 model.
    """
    chosen = {}
    for component in profiled_components(bundle.manifest.components):
        models = bundle.manifest.components[component].models
        if precision in QDQ_PRECISIONS and precision in models:
            chosen[component] = precision
        elif not toolkit.always_strongly_typed:
            chosen[component] = "fp16" if "fp16" in models else "fp32"
        elif kind_of(component) in VAE_KINDS and not request.fp16_vae and "fp32" in models:
            chosen[component] = "fp32"  # fp16 VAEs overflow in some checkpoints; opt in
        else:
            chosen[component] = "fp16"
    return chosen


def resolve(
    bundle: Bundle, request: BuildRequest, platform: Platform
) -> tuple[tuple[str, ...], str]:
    """(targets, precision) of a request, after every check that needs no building."""
    targets = resolve_targets(request, platform)
    precision = resolve_precision(bundle, request.precision, platform, targets)
    toolkit = platform.toolkit
    turing = min(sm_of(t) for t in targets) <= TURING_SM
    if toolkit.flavour == "rtx" and turing and not request.fp16_vae:
        raise InputError(
            f"{toolkit.title} runs no FP32 matrix multiply on Turing (7.5), and the VAE decoder "
            "would build from its fp32 model",
            "Add --fp16-vae for --targets 7.5",
        )
    return targets, precision


def missing_fp16_models(bundle: Bundle, request: BuildRequest, platform: Platform) -> list[str]:
    """Components whose engine needs an fp16 model the bundle does not have yet."""
    _, precision = resolve(bundle, request, platform)
    chosen = source_models(bundle, request, precision, platform.toolkit)
    return [c for c, p in chosen.items() if p not in bundle.manifest.components[c].models]


def plan_engines(bundle: Bundle, request: BuildRequest, platform: Platform) -> list[EnginePlan]:
    """One plan per pipeline component for `request` on `platform`."""
    targets, precision = resolve(bundle, request, platform)
    toolkit = platform.toolkit
    config = bundle.manifest.model
    default = config.default_image_size
    size = request.size or SizeRange(
        Span(default, default, default), Span(default, default, default)
    )
    spans = dim_spans(request.batch, size, config, request.static)
    chosen = source_models(bundle, request, precision, toolkit)
    plans = []
    for component in profiled_components(bundle.manifest.components):
        source = bundle.model(component, chosen[component])
        plans.append(
            EnginePlan(
                component=component,
                precision=precision,
                onnx=source,
                onnx_sha256=_source_digest(bundle, source),
                profile=component_profile(component, source.inputs, spans),
                toolkit=toolkit,
                targets=targets,
                gpu_name=None if toolkit.builds_ahead_of_time else platform.gpu_name,
                flags=builder_flags(
                    chosen[component] in QDQ_PRECISIONS, precision, request, toolkit
                ),
            )
        )
    return plans
