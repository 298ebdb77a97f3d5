"""Quantisation of the shipped shapes model through ONNX Runtime, measured against fp32."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgediff.bundle.edit import edit
from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import QUANTIZED_OPS
from edgediff.calibration.capture import calibrate, calibration_record
from edgediff.calibration.prompts import read_prompts
from edgediff.calibration.quantize import RecordedInputs, settings_for
from edgediff.calibration.quantize_bundle import parse_components, quantize_bundle
from edgediff.calibration.sensitivity import (
    LayerScore,
    choose_keep,
    layer_groups,
    layer_of,
    quantizable_nodes,
    resolve_keep,
)
from edgediff.cli import cli
from edgediff.data import shapes
from edgediff.data.shapes import eval_prompts
from edgediff.errors import BundleError, InputError
from edgediff.metrics.quality import paired_psnr, psnr
from edgediff.runtime.backends import get_backend
from edgediff.runtime.pipeline import DEFAULT_BUNDLE, Pipeline
from edgediff.tolerances import QUANT_CALL_MIN_PSNR_DB, QUANT_TARGET_PSNR_DB


def _unet_call_psnrs(bundle: Bundle, precision: str) -> list[float]:
    inputs = RecordedInputs(calibration_record(bundle, "unet"))
    backend = get_backend("ort-cpu")
    fp32 = backend.load(bundle.path(bundle.model("unet", "fp32").file))
    quantized = backend.load(bundle.path(bundle.model("unet", precision).file))
    out = []
    for i in range(0, inputs.calls, 4):
        feeds = inputs.feeds(i)
        out.append(psnr(quantized.run(feeds)["out_sample"], fp32.run(feeds)["out_sample"]))
    return out


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_unet_is_near_fp32_on_calibration_inputs(quantized, precision):
    assert min(_unet_call_psnrs(quantized, precision)) >= QUANT_CALL_MIN_PSNR_DB[precision]


def test_int8_unet_meets_the_targets_on_evaluation_prompts(quantized):
    """Paired final-latent PSNR >= 30 dB on prompts calibration never saw; file <= 0.35x."""
    prompts = [shapes.canonical_caption(a) for a in eval_prompts(16)]
    fp32 = Pipeline.load(quantized, precision="fp32")
    int8 = Pipeline.load(quantized, precision="int8")
    reference = fp32(prompts, seed=11, output_type="latent")
    latents = int8(prompts, seed=11, output_type="latent")
    assert paired_psnr(latents, reference) >= QUANT_TARGET_PSNR_DB
    files = quantized.manifest.files
    ratio = files["unet/model.int8.onnx"].bytes / files["unet/model.onnx"].bytes
    assert ratio <= 0.35


def _qdq_facts(path):
    model = onnx.load(str(path))
    produced_by = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {t.name: t for t in model.graph.initializer}
    return model, produced_by, consumers, initializers


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_qdq_sit_only_where_tensorrt_expects_them(quantized, precision):
    path = quantized.path(quantized.model("unet", precision).file)
    onnx.checker.check_model(str(path), full_check=True)
    model, produced_by, consumers, initializers = _qdq_facts(path)
    zero_type = {"int8": onnx.TensorProto.INT8, "fp8": onnx.TensorProto.FLOAT8E4M3FN}[precision]
    dequantized = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dequantized
    for dq in dequantized:
        # Symmetric: every zero point is 0, of the precision's type (TensorRT accepts no other).
        zero = initializers[dq.input[2]]
        assert zero.data_type == zero_type
        assert not np.any(onnx.numpy_helper.to_array(zero).astype(np.float32))
        users = {u.op_type for u in consumers.get(dq.output[0], [])}
        source = dq.input[0]
        if source in initializers:
            # A weight: per output channel (one scale per channel), feeding Conv/MatMul/Gemm.
            assert users <= set(QUANTIZED_OPS), users
            scale = onnx.numpy_helper.to_array(initializers[dq.input[1]])
            assert scale.size == initializers[source].dims[_channel_axis(dq)]
        else:
            # An activation: per tensor, on an input or an output of a quantised op.
            scale = onnx.numpy_helper.to_array(initializers[dq.input[1]])
            assert scale.size == 1
            origin = produced_by.get(produced_by[source].input[0])
            from_quantized = origin is not None and origin.op_type in QUANTIZED_OPS
            assert from_quantized or _reaches_quantized_op(dq.output[0], consumers), dq.name
    # Biases stay float: no INT32 dequantisation, which TensorRT does not have.
    assert not [t for t in initializers.values() if t.data_type == onnx.TensorProto.INT32]


# Ops that only move or reshape data: TensorRT moves Q/DQ across them to the op they feed.
_DATA_MOVEMENT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice"}


def _reaches_quantized_op(tensor: str, consumers: dict) -> bool:
    """Does `tensor` flow into a Conv/MatMul/Gemm, directly or through data movement only?"""
    for node in consumers.get(tensor, []):
        if node.op_type in QUANTIZED_OPS:
            return True
        if node.op_type in _DATA_MOVEMENT and any(
            _reaches_quantized_op(out, consumers) for out in node.output
        ):
            return True
    return False


def _channel_axis(dq) -> int:
    axis = [a.i for a in dq.attribute if a.name == "axis"]
    return axis[0] if axis else 1


def test_fp8_model_declares_opset_19_and_runs_on_ort_cpu(quantized):
    path = quantized.path(quantized.model("unet", "fp8").file)
    assert onnx.load(str(path)).opset_import[0].version >= 19  # float8 Q/DQ need opset 19
    images = Pipeline.load(quantized, precision="fp8")("a red circle", seed=1, output_type="np")
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_manifest_records_quantised_models_and_generate_uses_them(quantized, tmp_path):
    entry = quantized.model("unet", "int8")
    assert entry.quantization.settings.per_channel is True
    assert entry.quantization.kept_in_float == ()
    assert entry.inputs == quantized.model("unet", "fp32").inputs
    quantized.verify()
    out = tmp_path / "int8.png"
    result = CliRunner().invoke(
        cli,
        [
            "generate",
            "a red circle",
            "--bundle",
            str(quantized.root),
            "--precision",
            "int8",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    # The text encoder and VAE decoder have no int8 model: they load their defaults.
    pipe = Pipeline.load(quantized, precision="int8")
    assert pipe.sessions["unet"] is not None
    assert "int8" not in quantized.manifest.components["vae_decoder"].models


def test_keep_auto_measures_every_layer_and_saves_the_table(tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, root)
    calibrate(root, read_prompts(), samples=4, steps=4, batch_size=4, force=True)
    [result] = quantize_bundle(
        root, "int8", ["text_encoder"], keep="auto", probe_prompts=2, force=True
    )
    bundle = Bundle.open(root)
    layers = layer_groups(quantizable_nodes(bundle.path("text_encoder/model.onnx")))
    table = json.loads((root / "text_encoder/sensitivity.int8.json").read_text())
    assert {row["layer"] for row in table["layers"]} == set(layers)
    assert [row["psnr_db"] for row in table["layers"]] == sorted(
        row["psnr_db"] for row in table["layers"]
    )  # most sensitive first
    assert result.met_target and result.psnr_db >= QUANT_TARGET_PSNR_DB
    assert table["kept"] == result.kept
    bundle.verify()


def test_keep_search_keeps_the_fewest_most_sensitive_layers():
    ranked = [LayerScore("a", 1, 20.0), LayerScore("b", 1, 25.0), LayerScore("c", 1, 40.0)]
    # A model's PSNR here rises as layers are kept: 22 dB with none, +6 per kept layer.
    search = choose_keep(ranked, lambda keep: 22.0 + 6 * len(keep), target_db=30.0)
    assert search.keep == ["a", "b"] and search.met_target
    assert [t["keep"] for t in search.trials] == [[], ["a"], ["a", "b"]]
    unreachable = choose_keep(ranked, lambda keep: 10.0, target_db=30.0)
    assert not unreachable.met_target and unreachable.keep == ["a", "b", "c"]


def test_layers_are_blocks_named_after_modules():
    nodes = quantizable_nodes(DEFAULT_BUNDLE / "unet/model.onnx")
    assert "conv_in/Conv" in nodes and all("/" in n for n in nodes)
    assert layer_of("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q/MatMul") == (
        "down_blocks.1.attentions.0"
    )
    assert layer_of("mid_block.resnets.0.conv1/Conv") == "mid_block.resnets.0"
    assert layer_of("time_embedding.linear_1/Gemm") == "time_embedding.linear_1"
    groups = layer_groups(nodes)
    assert resolve_keep(["mid_block"], groups) == [n for n in nodes if n.startswith("mid_block.")]


def test_bad_inputs_give_clear_errors(quantized, tmp_path):
    uncalibrated = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, uncalibrated)
    with edit(uncalibrated, "test: drop calibration") as tx:
        tx.set_calibration(None)
    with pytest.raises(BundleError, match=r"has no calibration data.*edgediff calibrate"):
        quantize_bundle(uncalibrated, "int8", ["unet"], keep="none", force=True)
    with pytest.raises(InputError, match="unknown component 'decoder'"):
        parse_components("unet,decoder")

    runner = CliRunner()
    root = str(quantized.root)
    result = runner.invoke(cli, ["quantize", root, "--keep", "down_blocks.9", "--force"])
    assert result.exit_code == 1
    assert "'down_blocks.9', which is no quantisable layer" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(cli, ["quantize", root, "--components", "unet,vae"])
    assert result.exit_code == 1 and "unknown component 'vae'" in result.output
    result = runner.invoke(cli, ["quantize", root])
    assert result.exit_code == 1 and "unet is already quantised to int8" in result.output
    result = runner.invoke(cli, ["quantize", root, "--precision", "int4"])
    assert result.exit_code == 2 and "int4" in result.output
    result = runner.invoke(cli, ["generate", "x", "--bundle", root, "--precision", "fp16"])
    assert result.exit_code == 1 and "has no fp16 unet" in result.output
    result = runner.invoke(cli, ["quantize", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_cpu_target_quantises_activations_as_uint8(tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, root)
    result = CliRunner().invoke(
        cli, ["quantize", str(root), "--keep", "none", "--target", "cpu", "--force"]
    )
    assert result.exit_code == 0, result.output
    bundle = Bundle.open(root)
    entry = bundle.model("unet", "int8")
    assert entry.quantization.settings.target == "cpu"
    model = onnx.load(str(bundle.path(entry.file)))
    initializers = {t.name: t for t in model.graph.initializer}
    zero_types = {
        initializers[n.input[2]].data_type
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
    }
    assert zero_types == {onnx.TensorProto.UINT8}  # activations; weights stay int8 symmetric
    assert entry.quantization.psnr_db >= QUANT_TARGET_PSNR_DB
    with pytest.raises(InputError, match="--target cpu is for int8"):
        settings_for("fp8", "cpu")


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_attention_stays_float_and_fuses_at_load(quantized, precision):
    """Attention's activation products get no Q/DQ, so the ORT backend fuses every attention."""
    from edgediff.runtime.backends.onnx_proto import load_model
    from edgediff.runtime.backends.ort_attention import fuse_attention

    model = load_model(quantized.path(quantized.model("unet", precision).file).read_bytes())
    softmaxes = sum(n.op_type == "Softmax" for n in model.graph.node)
    assert softmaxes > 0
    assert fuse_attention(model) == softmaxes


def test_weights_with_a_second_hard_link_are_refused_before_any_work(tmp_path):
    # onnx will not read external weights that have more than one link; the quantiser would
    # otherwise fail minutes in, with a traceback.
    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, root)
    with edit(root, "test: external U-Net weights") as tx:
        entry = tx.bundle.model("unet", "fp32")
        onnx.save_model(
            onnx.load(str(root / entry.file)),
            str(tx.path(entry.file)),
            save_as_external_data=True,
            location="model.onnx.data",
            size_threshold=1024,
        )
        tx.put_model("unet", dataclasses.replace(entry, external_data=("unet/model.onnx.data",)))
    (tmp_path / "elsewhere.data").hardlink_to(root / "unet/model.onnx.data")
    result = CliRunner().invoke(cli, ["quantize", str(root), "--keep", "none", "--force"])
    assert result.exit_code == 1
    assert "unet/model.onnx.data has more than one hard link" in result.output
    assert "cp -r" in result.output and len(result.output.strip().splitlines()) == 1
