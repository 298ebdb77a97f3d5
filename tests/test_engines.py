"""Engine planning, caching and compatibility: everything around TensorRT that runs without it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgediff.cli import cli
from edgediff.engines.build import build_engines
from edgediff.engines.plan import BuildRequest, builder_flags, plan_engines, resolve_precision
from edgediff.engines.profiles import (
    SizeRange,
    Span,
    component_profile,
    dim_spans,
    parse_size,
    parse_span,
)
from edgediff.errors import BackendError, BundleError, InputError
from edgediff.runtime.bundle import Bundle, with_files, write_manifest
from edgediff.runtime.engine_compat import (
    Platform,
    incompatibility,
    outside_profile,
    require_compatible,
)
from edgediff.runtime.pipeline import DEFAULT_BUNDLE

ORIN = Platform("10.3.0", "Orin", "8.7")
H100 = Platform("10.13.0", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    """A writable copy of the shipped bundle (fp32 components and an INT8 U-Net)."""
    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, root)
    return root


class RecordingBuilder:
    """Stands in for TensorRT: writes a file naming what it was asked to build, counts calls."""

    def __init__(self, fail_on: str | None = None):
        self.built: list[str] = []
        self.fail_on = fail_on

    def __call__(self, onnx: Path, plan, timing_cache, out: Path) -> None:
        assert onnx.is_file() and out.parent.is_dir()
        out.write_bytes(b"engine " + plan.key(ORIN).encode())  # half written ...
        if plan.component == self.fail_on:
            raise KeyboardInterrupt  # ... then interrupted
        self.built.append(plan.component)


# ---------------------------------------------------------------- profiles


def test_spans_and_sizes_parse_and_reject_bad_text():
    assert parse_span("2", "batch") == Span(2, 2, 2)
    assert parse_span("1:2:4", "batch") == Span(1, 2, 4)
    assert parse_size("512") == SizeRange(Span(512, 512, 512), Span(512, 512, 512))
    assert parse_size("256x384:512x768:768x1024") == SizeRange(
        Span(256, 512, 768), Span(384, 768, 1024)
    )
    assert str(parse_size("256x384:512x768:768x1024")) == "256x384:512x768:768x1024"
    for bad in ("1:2", "a", "1:2:3:4", ""):
        with pytest.raises(InputError, match="MIN:OPT:MAX"):
            parse_span(bad, "batch")
    for bad in ("512x", "1:2", "big"):
        with pytest.raises(InputError, match="--size"):
            parse_size(bad)


def test_profiles_double_the_guided_batch_and_use_latent_sizes(bundle_dir):
    bundle = Bundle.open(bundle_dir)
    config = bundle.manifest.model  # VAE factor 4, sizes multiples of 16
    spans = dim_spans(Span(1, 1, 4), parse_size("32:64:96"), config, static=False)
    unet = component_profile("unet", bundle.model("unet").inputs, spans)
    assert unet == {
        "sample": ((1, 4, 8, 8), (2, 4, 16, 16), (8, 4, 24, 24)),
        "encoder_hidden_states": ((1, 16, 64), (2, 16, 64), (8, 16, 64)),
    }  # the timestep is static, so it needs no profile
    text = component_profile("text_encoder", bundle.model("text_encoder").inputs, spans)
    assert text == {"input_ids": ((1, 16), (2, 16), (8, 16))}
    vae = component_profile("vae_decoder", bundle.model("vae_decoder").inputs, spans)
    assert vae == {"latent_sample": ((1, 4, 8, 8), (1, 4, 16, 16), (4, 4, 24, 24))}

    static = dim_spans(Span(1, 2, 4), parse_size("32:64:96"), config, static=True)
    unet = component_profile("unet", bundle.model("unet").inputs, static)
    assert unet["sample"] == ((4, 4, 16, 16),) * 3


def test_profiles_refuse_sizes_the_model_cannot_take(bundle_dir):
    config = Bundle.open(bundle_dir).manifest.model
    with pytest.raises(InputError, match="not a multiple of 16"):
        dim_spans(Span(1, 1, 1), parse_size("40"), config, static=False)
    with pytest.raises(InputError, match="MIN <= OPT <= MAX"):
        dim_spans(Span(4, 2, 1), parse_size("64"), config, static=False)
    with pytest.raises(InputError, match="MIN <= OPT <= MAX"):
        dim_spans(Span(1, 1, 1), parse_size("128:64:256"), config, static=False)


# ---------------------------------------------------------------- precision and flags


def test_precision_choice_follows_the_bundle_and_the_gpu(bundle_dir, tiny_bundle):
    shipped, float_only = Bundle.open(bundle_dir), Bundle.open(tiny_bundle)
    assert resolve_precision(shipped, "best", ORIN) == "int8"
    assert resolve_precision(float_only, "best", H100) == "fp16"
    with pytest.raises(InputError, match=r"8\.9 or newer.*Orin is 8\.7.*--precision int8"):
        resolve_precision(shipped, "fp8", ORIN)
    with pytest.raises(InputError, match=r"no fp8 U-Net.*quantize .* --precision fp8"):
        resolve_precision(shipped, "fp8", H100)
    with pytest.raises(InputError, match="unknown precision 'int4'"):
        resolve_precision(shipped, "int4", H100)


def test_qdq_models_build_strongly_typed_and_float_models_with_fp16():
    request = BuildRequest(workspace_mb=1024, tactic_memory_mb=512)
    assert builder_flags(True, "int8", request, 10) == {
        "strongly_typed": True,
        "workspace_mb": 1024,
        "tactic_memory_mb": 512,
    }
    assert builder_flags(True, "int8", BuildRequest(), 8) == {"fp16": True, "int8": True}
    assert builder_flags(False, "int8", BuildRequest(), 10) == {"fp16": True}
    with pytest.raises(InputError, match="FP8 engines need TensorRT 10"):
        builder_flags(True, "fp8", BuildRequest(), 8)


def test_int8_plan_uses_the_qdq_unet_and_float_models_elsewhere(bundle_dir):
    plans = plan_engines(Bundle.open(bundle_dir), BuildRequest(precision="int8"), ORIN)
    sources = {p.component: (p.onnx.file, p.flags) for p in plans}
    assert sources == {
        "text_encoder": ("text_encoder/model.onnx", {"fp16": True}),
        "unet": ("unet/model.int8.onnx", {"strongly_typed": True}),
        "vae_decoder": ("vae_decoder/model.onnx", {"fp16": True}),
    }
    assert {p.file for p in plans} == {
        f"engines/{c}.int8.plan" for c in ("text_encoder", "unet", "vae_decoder")
    }


# ---------------------------------------------------------------- the engine cache


def _keys(bundle_dir: Path) -> dict[str, str]:
    return {(e.component): e.key for e in Bundle.open(bundle_dir).manifest.engines}


def test_same_key_skips_and_each_changed_part_rebuilds(bundle_dir):
    request = BuildRequest(precision="int8", batch=Span(1, 1, 2))
    first = RecordingBuilder()
    results = build_engines(bundle_dir, request, ORIN, first)
    assert first.built == ["text_encoder", "unet", "vae_decoder"]
    assert not any(r.reused for r in results)
    bundle = Bundle.open(bundle_dir)
    bundle.verify()  # engines are hashed into the manifest like every other file
    unet = bundle.engine("unet", "int8")
    assert (unet.onnx, unet.tensorrt_version, unet.compute_capability) == (
        "unet/model.int8.onnx",
        "10.3.0",
        "8.7",
    )
    assert unet.profile["sample"] == {
        "min": [1, 4, 16, 16],
        "opt": [2, 4, 16, 16],
        "max": [4, 4, 16, 16],
    }

    info = CliRunner().invoke(cli, ["info", str(bundle_dir)]).output
    assert "engines/unet.int8.plan" in info and "TensorRT 10.3.0, Orin (sm 8.7)" in info

    again = RecordingBuilder()
    assert all(r.reused for r in build_engines(bundle_dir, request, ORIN, again))
    assert again.built == []

    changes = {
        "TensorRT version": (request, replace(ORIN, tensorrt_version="10.4.0")),
        "GPU name": (request, replace(ORIN, gpu_name="Orin Nano")),
        "compute capability": (request, replace(ORIN, compute_capability="8.6")),
        "batch range": (replace(request, batch=Span(1, 1, 4)), ORIN),
        "size range": (replace(request, size=parse_size("64:64:128")), ORIN),
        "static shapes": (replace(request, static=True), ORIN),
        "workspace": (replace(request, workspace_mb=256), ORIN),
        "tactic memory": (replace(request, tactic_memory_mb=256), ORIN),
    }
    for what, (changed_request, platform) in changes.items():
        before = _keys(bundle_dir)
        builder = RecordingBuilder()
        build_engines(bundle_dir, changed_request, platform, builder)
        # The text encoder's shapes do not depend on the image size.
        expected = ["unet", "vae_decoder"] if what == "size range" else list(before)
        assert builder.built == expected, what
        after = _keys(bundle_dir)
        assert [c for c in before if before[c] != after[c]] == expected, what
        build_engines(bundle_dir, request, ORIN, RecordingBuilder())  # back to the first key

    # A new precision is a new engine set beside the old one.
    build_engines(bundle_dir, replace(request, precision="fp16"), ORIN, RecordingBuilder())
    assert {e.precision for e in Bundle.open(bundle_dir).manifest.engines} == {"fp16", "int8"}


def test_a_changed_onnx_or_damaged_engine_rebuilds_only_that_engine(bundle_dir):
    import onnx

    request = BuildRequest(precision="int8")
    build_engines(bundle_dir, request, ORIN, RecordingBuilder())

    bundle = Bundle.open(bundle_dir)
    model = onnx.load(bundle_dir / "unet/model.int8.onnx")
    model.doc_string = "re-quantised"
    onnx.save(model, bundle_dir / "unet/model.int8.onnx")
    write_manifest(bundle_dir, with_files(bundle.manifest, bundle_dir, ["unet/model.int8.onnx"]))
    builder = RecordingBuilder()
    build_engines(bundle_dir, request, ORIN, builder)
    assert builder.built == ["unet"]

    (bundle_dir / "engines/vae_decoder.int8.plan").write_bytes(b"x" * 10)
    (bundle_dir / "engines/text_encoder.int8.plan").unlink()
    with pytest.raises(BundleError, match=r"text_encoder.int8.plan' is missing.*int8 --force"):
        Bundle.open(bundle_dir).verify()
    with pytest.raises(BundleError, match=r"vae_decoder.int8.plan' does not match.*--force"):
        Bundle.open(bundle_dir).verify(["engines/vae_decoder.int8.plan"])
    builder = RecordingBuilder()
    build_engines(bundle_dir, request, ORIN, builder)
    assert builder.built == ["text_encoder", "vae_decoder"]
    Bundle.open(bundle_dir).verify()

    builder = RecordingBuilder()
    build_engines(bundle_dir, request, ORIN, builder, force=True)
    assert builder.built == ["text_encoder", "unet", "vae_decoder"]


def test_an_interrupted_build_keeps_finished_engines_and_no_half_file(bundle_dir):
    with pytest.raises(KeyboardInterrupt):
        build_engines(bundle_dir, BuildRequest(), ORIN, RecordingBuilder(fail_on="unet"))
    bundle = Bundle.open(bundle_dir)
    assert [e.component for e in bundle.manifest.engines] == ["text_encoder"]
    assert sorted(p.name for p in (bundle_dir / "engines").iterdir()) == ["text_encoder.fp16.plan"]
    builder = RecordingBuilder()
    build_engines(bundle_dir, BuildRequest(), ORIN, builder)
    assert builder.built == ["unet", "vae_decoder"]


# ---------------------------------------------------------------- compatibility at load time


def test_engines_from_another_tensorrt_or_gpu_are_refused_with_the_fix(bundle_dir):
    build_engines(bundle_dir, BuildRequest(precision="int8"), ORIN, RecordingBuilder())
    engine = Bundle.open(bundle_dir).engine("unet", "int8")
    assert incompatibility(engine, ORIN) is None
    assert incompatibility(engine, replace(ORIN, gpu_name="Orin Nano")) is None  # same sm
    problem = incompatibility(engine, replace(ORIN, tensorrt_version="10.7.0"))
    assert problem == (
        "the int8 unet engine was built by TensorRT 10.3.0; this is TensorRT 10.7.0, "
        "which cannot load it"
    )
    problem = incompatibility(engine, H100)
    assert "built by TensorRT 10.3.0" in problem  # version is checked first
    problem = incompatibility(engine, replace(H100, tensorrt_version="10.3.0"))
    assert problem == (
        "the int8 unet engine was built for a Orin (compute capability 8.7); this GPU is a "
        "NVIDIA H100 80GB HBM3 (compute capability 9.0)"
    )
    with pytest.raises(BackendError) as err:
        require_compatible(engine, H100, bundle_dir)
    assert f"edgediff build {bundle_dir} --precision int8 --force" in str(err.value)


def test_missing_or_ambiguous_engines_name_the_build_command(bundle_dir):
    bundle = Bundle.open(bundle_dir)
    with pytest.raises(BundleError, match=r"no fp16 TensorRT engine for unet.*edgediff build"):
        bundle.engine("unet")
    build_engines(bundle_dir, BuildRequest(precision="int8"), ORIN, RecordingBuilder())
    assert Bundle.open(bundle_dir).engine("unet").precision == "int8"
    with pytest.raises(BundleError, match=r"has engines at: int8.*--precision fp16"):
        Bundle.open(bundle_dir).engine("unet", "fp16")
    build_engines(bundle_dir, BuildRequest(precision="fp16"), ORIN, RecordingBuilder())
    with pytest.raises(BundleError, match=r"several precisions \(fp16, int8\)"):
        Bundle.open(bundle_dir).engine("unet")


def test_requests_outside_the_profile_are_named():
    assert outside_profile("sample", (2, 4, 16, 16), (1, 4, 8, 8), (8, 4, 24, 24)) is None
    problem = outside_profile("sample", (2, 4, 32, 16), (1, 4, 8, 8), (8, 4, 24, 24))
    assert problem == (
        "input 'sample' has shape (2, 4, 32, 16), outside the engine's profile "
        "(1, 4, 8, 8) .. (8, 4, 24, 24)"
    )
    assert outside_profile("sample", (2, 4, 16), (1, 4, 8, 8), (8, 4, 24, 24)) is not None
