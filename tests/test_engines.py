"""Engine planning, caching and compatibility: everything around TensorRT that runs without it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgediff.bundle.edit import edit
from edgediff.bundle.engine_compat import (
    Platform,
    incompatibility,
    outside_profile,
    require_compatible,
)
from edgediff.bundle.flavours import Toolkit
from edgediff.bundle.reader import Bundle
from edgediff.cli import cli
from edgediff.engines.build import build_engines
from edgediff.engines.plan import (
    BuildRequest,
    builder_flags,
    parse_targets,
    plan_engines,
    resolve,
    resolve_precision,
)
from edgediff.engines.profiles import (
    SizeRange,
    Span,
    component_profile,
    dim_spans,
    parse_size,
    parse_span,
)
from edgediff.errors import BackendError, BundleError, EngineError, InputError
from edgediff.runtime.pipeline import DEFAULT_BUNDLE

ORIN = Platform(Toolkit("tensorrt", "10.3.0"), "Orin", "8.7")
H100 = Platform(Toolkit("tensorrt", "10.13.0"), "NVIDIA H100 80GB HBM3", "9.0")


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
        out.write_bytes(b"engine " + plan.key.encode())  # half written ...
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


def test_profiles_double_the_guided_batch_and_use_latent_sizes(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)  # a teacher: its U-Net runs [uncond; cond]
    config = bundle.manifest.model
    assert bundle.model("unet").distillation is None
    m = config.size_multiple
    spans = dim_spans(Span(1, 1, 4), parse_size(f"{2 * m}:{4 * m}:{6 * m}"), config, static=False)
    latent = [k * m // config.vae_scale_factor for k in (2, 4, 6)]
    text = (config.max_text_length, config.text_embed_dim)
    unet = component_profile("unet", bundle.model("unet").inputs, spans)
    assert unet == {
        "sample": ((1, 4, latent[0], latent[0]), (2, 4, latent[1], latent[1]),
                   (8, 4, latent[2], latent[2])),
        "encoder_hidden_states": ((1, *text), (2, *text), (8, *text)),
    }  # fmt: skip  # the timestep is static, so it needs no profile
    ids = component_profile("text_encoder", bundle.model("text_encoder").inputs, spans)
    length = config.max_text_length
    assert ids == {"input_ids": ((1, length), (2, length), (8, length))}
    vae = component_profile("vae_decoder", bundle.model("vae_decoder").inputs, spans)
    assert vae == {
        "latent_sample": ((1, 4, latent[0], latent[0]), (1, 4, latent[1], latent[1]),
                          (4, 4, latent[2], latent[2])),
    }  # fmt: skip

    static = dim_spans(Span(1, 2, 4), parse_size(f"{2 * m}:{4 * m}:{6 * m}"), config, static=True)
    unet = component_profile("unet", bundle.model("unet").inputs, static)
    assert unet["sample"] == ((4, 4, latent[1], latent[1]),) * 3


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
    assert resolve_precision(shipped, "best", ORIN, ("8.7",)) == "int8"
    assert resolve_precision(float_only, "best", H100, ("9.0",)) == "fp16"
    with pytest.raises(InputError, match=r"8\.9 or newer.*Orin is 8\.7.*--precision int8"):
        resolve_precision(shipped, "fp8", ORIN, ("8.7",))
    with pytest.raises(InputError, match=r"no fp8 U-Net.*quantize .* --precision fp8"):
        resolve_precision(shipped, "fp8", H100, ("9.0",))
    with pytest.raises(InputError, match="unknown precision 'int4'"):
        resolve_precision(shipped, "int4", H100, ("9.0",))


def test_qdq_models_build_strongly_typed_and_float_models_with_fp16():
    request = BuildRequest(workspace_mb=1024, tactic_memory_mb=512)
    trt10, trt86 = Toolkit("tensorrt", "10.3.0"), Toolkit("tensorrt", "8.6.2")
    assert builder_flags(True, "int8", request, trt10) == {
        "strongly_typed": True,
        "workspace_mb": 1024,
        "tactic_memory_mb": 512,
    }
    assert builder_flags(True, "int8", BuildRequest(), trt86) == {"fp16": True, "int8": True}
    assert builder_flags(False, "int8", BuildRequest(), trt10) == {"fp16": True}
    with pytest.raises(InputError, match="FP8 engines need TensorRT 10"):
        builder_flags(True, "fp8", BuildRequest(), trt86)
    # TensorRT 11 and TensorRT-RTX have no precision flags: types come from the ONNX.
    for toolkit in (Toolkit("tensorrt", "11.4.0"), Toolkit("rtx", "1.7.1.116")):
        assert builder_flags(False, "fp16", BuildRequest(), toolkit) == {"strongly_typed": True}
        assert builder_flags(True, "fp8", BuildRequest(), toolkit) == {"strongly_typed": True}


# The shipped bundle's engines, in plan order: both students, both decoders and the encoder.
SHIPPED_ENGINES = [
    "text_encoder", "unet", "vae_decoder", "vae_encoder", "unet.steps-1", "vae_decoder.tiny"
]  # fmt: skip


def test_int8_plan_uses_the_qdq_unets_and_float_models_elsewhere(bundle_dir):
    plans = plan_engines(Bundle.open(bundle_dir), BuildRequest(precision="int8"), ORIN)
    sources = {p.component: (p.onnx.file, p.flags) for p in plans}
    assert sources == {
        "text_encoder": ("text_encoder/model.onnx", {"fp16": True}),
        "unet": ("unet/model.int8.onnx", {"strongly_typed": True}),
        "unet.steps-1": ("unet.steps-1/model.int8.onnx", {"strongly_typed": True}),
        "vae_decoder": ("vae_decoder/model.onnx", {"fp16": True}),
        "vae_encoder": ("vae_encoder/model.onnx", {"fp16": True}),
        "vae_decoder.tiny": ("vae_decoder.tiny/model.onnx", {"fp16": True}),
    }
    assert [p.file for p in plans] == [f"engines/trt/{c}.int8.plan" for c in SHIPPED_ENGINES]


# ---------------------------------------------------------------- the engine cache


def _keys(bundle_dir: Path) -> dict[str, str]:
    return {(e.component): e.key for e in Bundle.open(bundle_dir).manifest.engines}


def test_same_key_skips_and_each_changed_part_rebuilds(bundle_dir):
    request = BuildRequest(precision="int8", batch=Span(1, 1, 2))
    first = RecordingBuilder()
    results = build_engines(bundle_dir, request, ORIN, first)
    assert first.built == SHIPPED_ENGINES
    assert not any(r.reused for r in results)
    bundle = Bundle.open(bundle_dir)
    bundle.verify()  # engines are hashed into the manifest like every other file
    unet = bundle.engine("unet", "int8")
    assert (unet.onnx, unet.flavour, unet.tensorrt_version, unet.targets, unet.gpu_name) == (
        "unet/model.int8.onnx",
        "tensorrt",
        "trt-10.3.0",
        ("8.7",),
        "Orin",
    )
    assert unet.profile["sample"] == {  # a student: the images' batch, not the doubled one
        "min": [1, 4, 16, 16],
        "opt": [1, 4, 16, 16],
        "max": [2, 4, 16, 16],
    }

    info = CliRunner().invoke(cli, ["info", str(bundle_dir)]).output
    assert "engines/trt/unet.int8.plan" in info and "TensorRT 10.3.0, Orin (sm 8.7)" in info

    again = RecordingBuilder()
    assert all(r.reused for r in build_engines(bundle_dir, request, ORIN, again))
    assert again.built == []

    changes = {
        "TensorRT version": (request, replace(ORIN, toolkit=Toolkit("tensorrt", "10.4.0"))),
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
        expected = SHIPPED_ENGINES[1:] if what == "size range" else list(before)
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

    model = onnx.load(bundle_dir / "unet/model.int8.onnx")
    model.doc_string = "re-quantised"
    with edit(bundle_dir, "test: re-quantise") as tx:
        onnx.save(model, tx.path("unet/model.int8.onnx"))
    builder = RecordingBuilder()
    build_engines(bundle_dir, request, ORIN, builder)
    assert builder.built == ["unet"]

    (bundle_dir / "engines/trt/vae_decoder.int8.plan").write_bytes(b"x" * 10)
    (bundle_dir / "engines/trt/text_encoder.int8.plan").unlink()
    with pytest.raises(BundleError, match=r"text_encoder.int8.plan' is missing.*int8 --flavour"):
        Bundle.open(bundle_dir).verify()
    with pytest.raises(BundleError, match=r"vae_decoder.int8.plan' does not match.*--force"):
        Bundle.open(bundle_dir).verify(["engines/trt/vae_decoder.int8.plan"])
    builder = RecordingBuilder()
    build_engines(bundle_dir, request, ORIN, builder)
    assert builder.built == ["text_encoder", "vae_decoder"]
    Bundle.open(bundle_dir).verify()

    builder = RecordingBuilder()
    build_engines(bundle_dir, request, ORIN, builder, force=True)
    assert builder.built == SHIPPED_ENGINES


def test_an_interrupted_build_keeps_finished_engines_and_no_half_file(bundle_dir):
    with pytest.raises(KeyboardInterrupt):
        build_engines(bundle_dir, BuildRequest(), ORIN, RecordingBuilder(fail_on="unet"))
    bundle = Bundle.open(bundle_dir)
    assert [e.component for e in bundle.manifest.engines] == ["text_encoder"]
    assert sorted(p.name for p in (bundle_dir / "engines/trt").iterdir()) == [
        "text_encoder.fp16.plan"
    ]
    builder = RecordingBuilder()
    build_engines(bundle_dir, BuildRequest(), ORIN, builder)
    assert builder.built == SHIPPED_ENGINES[1:]


# ---------------------------------------------------------------- compatibility at load time


def test_engines_from_another_tensorrt_or_gpu_are_refused_with_the_fix(bundle_dir):
    build_engines(bundle_dir, BuildRequest(precision="int8"), ORIN, RecordingBuilder())
    engine = Bundle.open(bundle_dir).engine("unet", "int8")
    assert incompatibility(engine, ORIN) is None
    assert incompatibility(engine, replace(ORIN, gpu_name="Orin Nano")) is None  # same sm
    problem = incompatibility(engine, replace(ORIN, toolkit=Toolkit("tensorrt", "10.7.0")))
    assert problem == (
        "the int8 unet engine was built by TensorRT 10.3.0; this is TensorRT 10.7.0, "
        "which cannot load it"
    )
    problem = incompatibility(engine, H100)
    assert "built by TensorRT 10.3.0" in problem  # version is checked first
    problem = incompatibility(engine, replace(H100, toolkit=ORIN.toolkit))
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
    with pytest.raises(BundleError, match=r"no fp16 TensorRT-RTX engine.*--flavour rtx"):
        bundle.engine("unet", flavour="rtx")
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


# ---------------------------------------------------------------- flavours and targets

RTX = Platform(Toolkit("rtx", "1.7.1.116"), known_targets=("7.5", "8.0", "8.6", "8.9", "12.0"))
RTX_4090 = Platform(RTX.toolkit, "NVIDIA GeForce RTX 4090", "8.9", RTX.known_targets)


def test_rtx_plans_need_no_gpu_and_carry_their_targets(bundle_dir):
    builder = RecordingBuilder()
    build_engines(bundle_dir, BuildRequest(precision="int8"), RTX, builder)
    bundle = Bundle.open(bundle_dir)
    engines = {e.component: e for e in bundle.manifest.engines}
    assert {e.targets for e in engines.values()} == {("8.0", "8.6", "8.9", "12.0")}
    assert {e.file for e in engines.values()} == {
        f"engines/rtx/{c}.int8.plan" for c in SHIPPED_ENGINES
    }
    # Strongly typed: the float components come from fp16 models, made and recorded on the
    # way; the VAE stays fp32.
    assert {c: e.onnx for c, e in engines.items()} == {
        "text_encoder": "text_encoder/model.fp16.onnx",
        "unet": "unet/model.int8.onnx",
        "unet.steps-1": "unet.steps-1/model.int8.onnx",
        "vae_decoder": "vae_decoder/model.onnx",
        "vae_encoder": "vae_encoder/model.onnx",
        "vae_decoder.tiny": "vae_decoder.tiny/model.onnx",
    }
    made = bundle.model("text_encoder", "fp16")
    assert made.verification is not None and made.verification.passed
    assert sorted(bundle.manifest.components["unet"].models) == ["fp32", "int8"]
    bundle.verify()
    # The same build on a machine with an RTX GPU is the same engine: the key has no GPU in it.
    plans = plan_engines(bundle, BuildRequest(precision="int8"), RTX)
    on_gpu = plan_engines(bundle, BuildRequest(precision="int8"), RTX_4090)
    assert (
        [p.key for p in on_gpu]
        == [p.key for p in plans]
        == [engines[p.component].key for p in plans]
    )
    other = plan_engines(bundle, BuildRequest(precision="int8", targets=("8.9", "8.6")), RTX)
    assert all(a.key != b.key for a, b in zip(other, plans, strict=True))
    assert other[0].targets == ("8.6", "8.9")


def test_precision_and_targets_are_checked_before_anything_is_built(bundle_dir):
    bundle = Bundle.open(bundle_dir)

    def plan(platform=RTX, **request):
        return resolve(bundle, BuildRequest(**request), platform)

    with pytest.raises(InputError, match=r"FP8 needs compute capability 8\.9.*include 8\.0, 8\.6"):
        plan(precision="fp8")
    with pytest.raises(InputError, match=r"no fp8 U-Net.*quantize"):
        plan(precision="fp8", targets=("8.9", "12.0"))
    with pytest.raises(InputError, match=r"cannot build for compute capability 8\.7.*--flavour"):
        plan(targets=("8.7",))
    with pytest.raises(InputError, match=r"only fp16 engines for Turing.*not int8"):
        plan(precision="int8", targets=("7.5",))
    with pytest.raises(InputError, match=r"Turing \(7\.5\).*--fp16-vae"):
        plan(precision="fp16", targets=("7.5", "8.6"))
    assert plan(precision="best", targets=("7.5",), fp16_vae=True) == (("7.5",), "fp16")
    assert plan(precision="best") == (("8.0", "8.6", "8.9", "12.0"), "int8")
    with pytest.raises(InputError, match="--targets is for TensorRT-RTX"):
        plan(ORIN, targets=("8.7",))
    no_gpu = Platform(Toolkit("tensorrt", "11.4.0"))
    with pytest.raises(EngineError, match=r"builds engines on the GPU.*has no usable NVIDIA GPU"):
        plan(no_gpu)
    with pytest.raises(InputError, match="not a comma list"):
        parse_targets("8,6")


def test_engines_of_another_flavour_version_or_target_are_refused(bundle_dir):
    build_engines(bundle_dir, BuildRequest(precision="int8"), RTX, RecordingBuilder())
    engine = Bundle.open(bundle_dir).engine("unet", "int8", "rtx")
    assert (engine.flavour, engine.tensorrt_version, engine.gpu_name) == (
        "rtx",
        "rtx-1.7.1.116",
        None,
    )
    assert incompatibility(engine, RTX_4090) is None
    turing = replace(RTX_4090, gpu_name="NVIDIA GeForce RTX 2080", compute_capability="7.5")
    with pytest.raises(BackendError) as err:
        require_compatible(engine, turing, bundle_dir)
    assert str(err.value) == (
        "the int8 unet engine was built for compute capabilities 8.0, 8.6, 8.9, 12.0; this GPU is "
        "a NVIDIA GeForce RTX 2080 (compute capability 7.5). Rebuild the engines for this GPU "
        f"too: edgediff build {bundle_dir} --precision int8 --targets 7.5,8.0,8.6,8.9,12.0 --force"
    )
    newer = replace(RTX_4090, toolkit=Toolkit("rtx", "1.8.0.1"))
    assert "built by TensorRT-RTX 1.7.1.116; this is TensorRT-RTX 1.8.0.1" in str(
        incompatibility(engine, newer)
    )
    # A TensorRT-RTX 1.x is never read as a TensorRT 1: the flavours differ.
    classic = Platform(Toolkit("tensorrt", "1.7.1.116"), "NVIDIA GeForce RTX 4090", "8.9")
    with pytest.raises(BackendError, match=r"runs TensorRT 1\.7\.1\.116 instead.*--flavour tens"):
        require_compatible(engine, classic, bundle_dir)
    # Both flavours' engines live side by side; asking without a flavour is then ambiguous.
    build_engines(bundle_dir, BuildRequest(precision="int8"), ORIN, RecordingBuilder())
    assert Bundle.open(bundle_dir).engine("unet", "int8", "tensorrt").file == (
        "engines/trt/unet.int8.plan"
    )
    with pytest.raises(BundleError, match="engines of both TensorRT flavours"):
        Bundle.open(bundle_dir).engine("unet", "int8")


def test_engine_records_of_edgediff_0_1_still_read(bundle_dir):
    import json

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["engines"] = [
        {
            "component": "unet",
            "precision": "int8",
            "file": "engines/unet.int8.plan",
            "onnx": "unet/model.int8.onnx",
            "onnx_sha256": "0" * 64,
            "tensorrt_version": "10.3.0",
            "gpu_name": "Orin",
            "compute_capability": "8.7",
            "profile": {},
            "flags": {},
            "key": "0" * 64,
        }
    ]
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    engine = Bundle.open(bundle_dir).engine("unet", "int8")
    assert (engine.flavour, engine.tensorrt_version, engine.targets) == (
        "tensorrt",
        "trt-10.3.0",
        ("8.7",),
    )
    assert incompatibility(engine, ORIN) is None


def test_tensorrt_11_builds_float_components_from_fp16_models_too(bundle_dir):
    trt11 = Platform(Toolkit("tensorrt", "11.4.0"), "NVIDIA GeForce RTX 5090", "12.0")
    build_engines(
        bundle_dir, BuildRequest(precision="fp16", fp16_vae=True), trt11, RecordingBuilder()
    )
    engines = {e.component: e for e in Bundle.open(bundle_dir).manifest.engines}
    assert {c: e.onnx for c, e in engines.items()} == {
        c: f"{c}/model.fp16.onnx" for c in SHIPPED_ENGINES
    }
    assert {e.flags["strongly_typed"] for e in engines.values()} == {True}
    assert {(e.targets, e.gpu_name) for e in engines.values()} == {
        (("12.0",), "NVIDIA GeForce RTX 5090")
    }


def test_an_fp16_model_that_misses_the_tolerance_is_refused_and_not_kept(bundle_dir, monkeypatch):
    from edgediff import tolerances

    before = (bundle_dir / "manifest.json").read_bytes()
    monkeypatch.setitem(tolerances.EXPORT_REL_TOL, "fp16", 1e-9)
    with pytest.raises(EngineError, match=r"fp16 text_encoder differs from its fp32 model by"):
        build_engines(bundle_dir, BuildRequest(precision="int8"), RTX, RecordingBuilder())
    assert (bundle_dir / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in (bundle_dir / "text_encoder").iterdir()) == [
        "config.json",
        "model.onnx",
    ]
