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

from edgediff.engines.profiles import (
    PROFILED_COMPONENTS,
    Profile,
    SizeRange,
    Span,
    component_profile,
    dim_spans,
)
from edgediff.errors import InputError
from edgediff.runtime.bundle import Bundle, EngineEntry, ModelEntry
from edgediff.runtime.engine_compat import Platform

PRECISIONS = ("fp16", "int8", "fp8", "best")
QDQ_PRECISIONS = ("int8", "fp8")
FP8_MIN_SM = 89  # FP8 tensor cores: Ada (8.9) and Hopper (9.0) onwards; Orin (8.7) has none
STRONGLY_TYPED_MIN_MAJOR = 10  # the first TensorRT major this builder uses strong typing with
ENGINES_DIR = "engines"
DEFAULT_BATCH = Span(1, 1, 4)


@dataclass(frozen=True)
class BuildRequest:
    """What the user asked `edgediff build` for."""

    precision: str = "fp16"
    batch: Span = DEFAULT_BATCH
    size: SizeRange | None = None  # None: the model's default size, fixed
    static: bool = False
    workspace_mb: int | None = None
    tactic_memory_mb: int | None = None


@dataclass(frozen=True)
class EnginePlan:
    """One engine to build: its source ONNX, its profile and builder flags."""

    component: str
    precision: str
    onnx: ModelEntry
    onnx_sha256: str
    profile: Profile
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> str:
        """Where the engine lives in the bundle."""
        return f"{ENGINES_DIR}/{self.component}.{self.precision}.plan"

    def key(self, platform: Platform) -> str:
        """sha256 over everything that makes the engine valid."""
        parts = {
            "component": self.component,
            "precision": self.precision,
            "onnx_sha256": self.onnx_sha256,
            "tensorrt_version": platform.tensorrt_version,
            "gpu_name": platform.gpu_name,
            "compute_capability": platform.compute_capability,
            "profile": _profile_json(self.profile),
            "flags": self.flags,
        }
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def entry(self, platform: Platform, build_seconds: float) -> EngineEntry:
        """The manifest record of this plan built on `platform`."""
        return EngineEntry(
            component=self.component,
            precision=self.precision,
            file=self.file,
            onnx=self.onnx.file,
            onnx_sha256=self.onnx_sha256,
            tensorrt_version=platform.tensorrt_version,
            gpu_name=platform.gpu_name,
            compute_capability=platform.compute_capability,
            profile=_profile_json(self.profile),
            flags=self.flags,
            key=self.key(platform),
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


def resolve_precision(bundle: Bundle, precision: str, platform: Platform) -> str:
    """The concrete precision to build: 'best' becomes fp8, int8 or fp16; others are checked."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}'", f"Use one of {', '.join(PRECISIONS)}")
    unet = bundle.manifest.components["unet"].models
    if precision == "best":
        if "fp8" in unet and platform.sm >= FP8_MIN_SM:
            return "fp8"
        return "int8" if "int8" in unet else "fp16"
    if precision == "fp8" and platform.sm < FP8_MIN_SM:
        raise InputError(
            f"FP8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); this "
            f"{platform.gpu_name} is {platform.compute_capability}",
            "Build --precision int8 (Jetson Orin and Ampere run INT8 Q/DQ) or fp16",
        )
    if precision in QDQ_PRECISIONS and precision not in unet:
        raise InputError(
            f"the bundle has no {precision} U-Net to build a {precision} engine from",
            f"Make one first: edgediff calibrate {bundle.root} && "
            f"edgediff quantize {bundle.root} --precision {precision}",
        )
    return precision


def builder_flags(is_qdq: bool, precision: str, request: BuildRequest, trt_major: int) -> dict:
    """TensorRT builder settings for one engine (they are part of its key).

    Q/DQ models build as strongly typed networks where TensorRT has them, so the quantised
    layers run exactly as the graph says; float models build with fp16 allowed.
    """
    flags: dict[str, Any] = {}
    if is_qdq and trt_major >= STRONGLY_TYPED_MIN_MAJOR:
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


def plan_engines(bundle: Bundle, request: BuildRequest, platform: Platform) -> list[EnginePlan]:
    """One plan per pipeline component for `request` on `platform`."""
    precision = resolve_precision(bundle, request.precision, platform)
    config = bundle.manifest.model
    default = config.default_image_size
    size = request.size or SizeRange(
        Span(default, default, default), Span(default, default, default)
    )
    spans = dim_spans(request.batch, size, config, request.static)
    trt_major = int(platform.tensorrt_version.split(".")[0])
    plans = []
    for component in PROFILED_COMPONENTS:
        models = bundle.manifest.components[component].models
        if precision in QDQ_PRECISIONS and precision in models:
            source, is_qdq = models[precision], True
        else:
            source, is_qdq = models.get("fp16") or models["fp32"], False
        plans.append(
            EnginePlan(
                component=component,
                precision=precision,
                onnx=source,
                onnx_sha256=_source_digest(bundle, source),
                profile=component_profile(component, source.inputs, spans),
                flags=builder_flags(is_qdq, precision, request, trt_major),
            )
        )
    return plans
