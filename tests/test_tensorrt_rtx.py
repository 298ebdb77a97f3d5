"""Real engines from a real TensorRT-family compiler: TensorRT-RTX builds without a GPU.

TensorRT-RTX compiles ahead of time on any x86-64 machine, so CI builds every kind of engine
`edgediff build` makes — fp16 from an fp32-only bundle, INT8 and FP8 from Q/DQ models — and
checks the engine cache against real engine files. Running them needs an RTX GPU (see
scripts/gpu_check.sh).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from edgediff.bundle.edit import edit
from edgediff.bundle.reader import Bundle
from edgediff.cli import cli
from edgediff.runtime.pipeline import DEFAULT_BUNDLE

trt = pytest.importorskip(
    "tensorrt_rtx",
    reason="needs TensorRT-RTX (x86-64; the README's test command installs tensorrt_rtx_cu12)",
)

PORTABLE = ("8.0", "8.6", "8.9", "12.0")


def _build(root: Path, *options: str) -> str:
    """`edgediff build ROOT --flavour rtx OPTIONS`; its output, after checking it succeeded."""
    result = CliRunner().invoke(cli, ["build", str(root), "--flavour", "rtx", *options])
    assert result.exit_code == 0, result.output
    return result.output


def _refused(root: Path, *options: str) -> str:
    """The one-line error of a build that must fail, after checking it wrote nothing."""
    before = (root / "manifest.json").read_bytes()
    result = CliRunner().invoke(cli, ["build", str(root), "--flavour", "rtx", *options])
    assert result.exit_code == 1, result.output
    assert (root / "manifest.json").read_bytes() == before
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _copy(source: Path, tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    shutil.copytree(source, root)
    return root


def _engines(root: Path) -> dict:
    bundle = Bundle.open(root)
    bundle.verify()  # engines and the fp16 models are hashed like every other file
    return {e.component: e for e in bundle.manifest.engines}


def _outcomes(output: str) -> dict[str, str]:
    """component -> 'built' or 'reused', from the build's result lines."""
    rows = re.findall(r"([\w.-]+)\s+\w+\s+from \S+\s+[\d.]+ MB\s+(built|reused)", output)
    return dict(rows)


def _has_fp16_weights(path: Path) -> bool:
    model = onnx.load(str(path))
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def test_fp16_engines_build_from_an_fp32_only_bundle(tiny_bundle, tmp_path):
    root = _copy(tiny_bundle, tmp_path)
    output = _build(root, "--precision", "fp16", "--batch", "1:1:2")
    assert "making fp16 models for text_encoder, unet" in output
    components = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
    assert _outcomes(output) == dict.fromkeys(components, "built")
    engines = _engines(root)
    bundle = Bundle.open(root)
    for component in ("text_encoder", "unet"):
        made = bundle.model(component, "fp16")
        assert made.file == f"{component}/model.fp16.onnx" and made.verification.passed
        assert made.verification.reference == f"fp32 ONNX ({component}/model.onnx)"
        assert made.inputs == bundle.model(component, "fp32").inputs
        assert _has_fp16_weights(root / made.file)
        assert engines[component].onnx == made.file
    assert engines["vae_decoder"].onnx == "vae_decoder/model.onnx"  # fp32 unless --fp16-vae
    assert engines["vae_encoder"].onnx == "vae_encoder/model.onnx"
    # The encoder takes pixels, one image per prompt: the size and batch asked, not latents.
    assert engines["vae_encoder"].profile["sample"]["max"] == [2, 3, 64, 64]
    for engine in engines.values():
        assert (engine.flavour, engine.tensorrt_version) == ("rtx", f"rtx-{trt.__version__}")
        assert engine.targets == PORTABLE and engine.gpu_name is None
        assert engine.flags == {"strongly_typed": True}
        assert (root / engine.file).stat().st_size > 100_000
    assert engines["unet"].profile["sample"]["max"][0] == 4  # 2·MAX: the guidance batch

    again = _build(root, "--precision", "fp16", "--batch", "1:1:2")
    assert "making fp16" not in again
    assert _outcomes(again) == dict.fromkeys(engines, "reused")
    with_vae = _build(root, "--precision", "fp16", "--batch", "1:1:2", "--fp16-vae")
    assert _outcomes(with_vae) == {
        "text_encoder": "reused",
        "unet": "reused",
        "vae_decoder": "built",
        "vae_encoder": "built",
    }
    assert _engines(root)["vae_decoder"].onnx == "vae_decoder/model.fp16.onnx"
    assert _engines(root)["vae_encoder"].onnx == "vae_encoder/model.fp16.onnx"


def test_int8_engines_rebuild_only_what_changed(tmp_path):
    root = _copy(DEFAULT_BUNDLE, tmp_path)
    output = _build(root, "--precision", "int8", "--targets", "8.6,8.9")
    engines = _engines(root)
    assert engines["unet"].onnx == "unet/model.int8.onnx"
    assert engines["unet"].targets == ("8.6", "8.9")
    assert (root / engines["unet"].file).stat().st_size > 1_000_000
    assert _outcomes(output) == dict.fromkeys(engines, "built")

    # A re-quantised U-Net changes only the U-Net's key.
    model = onnx.load(str(root / "unet/model.int8.onnx"))
    model.doc_string = "re-quantised"
    with edit(root, "test: re-quantise") as tx:
        onnx.save(model, str(tx.path("unet/model.int8.onnx")))
    output = _build(root, "--precision", "int8", "--targets", "8.6,8.9")
    assert _outcomes(output) == {**dict.fromkeys(engines, "reused"), "unet": "built"}
    # Other targets are other engines: every one rebuilds.
    output = _build(root, "--precision", "int8", "--targets", "8.6")
    assert _outcomes(output) == dict.fromkeys(engines, "built")


def test_fp8_engines_build_for_ada_and_blackwell_only(quantized, tmp_path):
    root = _copy(quantized.root, tmp_path)
    error = _refused(root, "--precision", "fp8")  # the portable set includes 8.0 and 8.6
    assert "FP8 needs compute capability 8.9 or newer" in error and "--targets 8.9,12.0" in error
    error = _refused(root, "--precision", "fp8", "--targets", "8.6,8.9")
    assert "the targets include 8.6" in error
    _build(root, "--precision", "fp8", "--targets", "8.9,12.0")
    unet = _engines(root)["unet"]
    assert (unet.precision, unet.onnx, unet.targets) == (
        "fp8",
        "unet/model.fp8.onnx",
        ("8.9", "12.0"),
    )
    assert (root / unet.file).stat().st_size > 1_000_000
    # `best` picks FP8 only where every target has it.
    assert "fp8" in _build(root, "--precision", "best", "--targets", "8.9,12.0")
    assert "int8" in _build(root, "--precision", "best")


def test_bad_requests_are_refused_before_anything_is_built(tmp_path):
    root = _copy(DEFAULT_BUNDLE, tmp_path)
    error = _refused(root, "--precision", "fp8", "--targets", "8.9")
    assert "no fp8 U-Net" in error and "edgediff quantize" in error
    error = _refused(root, "--targets", "8.7")
    assert "cannot build for compute capability 8.7" in error and "--flavour tensorrt" in error
    error = _refused(root, "--targets", "9.0")
    assert "cannot build for compute capability 9.0" in error
    error = _refused(root, "--precision", "int8", "--targets", "7.5")
    assert "only fp16 engines for Turing" in error
    error = _refused(root, "--targets", "7.5")
    assert "--fp16-vae" in error
    error = _refused(root, "--timing-cache", str(tmp_path / "cache"))
    assert "no timing cache" in error
    assert not (root / "engines").exists()
    assert not (root / "text_encoder/model.fp16.onnx").exists()
