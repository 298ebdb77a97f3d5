"""Export: diffusers checkpoints -> bundles, checked with real torch, onnxruntime and diffusers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs the [train] extra")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgediff import tolerances  # noqa: E402
from edgediff.bundle.reader import Bundle  # noqa: E402
from edgediff.bundle.schema import COMPONENTS, MANIFEST  # noqa: E402
from edgediff.errors import BundleError, ExportError  # noqa: E402
from edgediff.export import export_checkpoint  # noqa: E402
from edgediff.export.checkpoint import load_checkpoint, load_component  # noqa: E402
from edgediff.export.components import sample_inputs, wrap  # noqa: E402
from edgediff.export.tokenizer import (  # noqa: E402
    CHECK_PROMPTS,
    encode_like_runtime,
    encode_like_transformers,
)
from edgediff.export.verify import compare  # noqa: E402
from edgediff.graphs.compare import cpu_session  # noqa: E402

PRESETS = ("tiny", "tiny-v")
PROMPTS = [
    "a red circle at the top left",
    "",
    "big blue square " * 40,  # far over any max_length
    "  Big   BLUE square,  left!  ",
]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _leftovers(parent: Path, name: str) -> list[str]:
    """Temporary folders an export of `parent/name` may have left behind."""
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def _helper_processes() -> list[int]:
    """Still-running export helper processes started by this test process (Linux only)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ppid = next(
            (line.split()[1] for line in status.splitlines() if line.startswith("PPid")), ""
        )
        if ppid == str(os.getpid()) and b"helper_main" in cmdline:
            found.append(int(entry.name))
    return found


def _expected_io(bundle: Bundle) -> dict[str, tuple[list, list]]:
    m = bundle.manifest.model
    length, c, e = m.max_text_length, m.latent_channels, m.text_embed_dim
    f32 = "float32"
    return {
        "text_encoder": (
            [("input_ids", "int64", ("batch", length))],
            [
                ("last_hidden_state", f32, ("batch", length, e)),
                ("pooler_output", f32, ("batch", e)),
            ],
        ),
        "unet": (
            [
                ("sample", f32, ("batch", c, "height", "width")),
                ("timestep", f32, (1,)),
                ("encoder_hidden_states", f32, ("batch", length, e)),
            ],
            [("out_sample", f32, ("batch", c, "height", "width"))],
        ),
        "vae_decoder": (
            [("latent_sample", f32, ("batch", c, "latent_height", "latent_width"))],
            [("sample", f32, ("batch", 3, "height", "width"))],
        ),
        "vae_encoder": (
            [("sample", f32, ("batch", 3, "height", "width"))],
            [("latent_parameters", f32, ("batch", 2 * c, "latent_height", "latent_width"))],
        ),
    }


def _onnx_io(path: Path) -> tuple[list, list]:
    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(v):
        t = v.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        return (v.name, dtype, tuple(d.dim_param or d.dim_value for d in t.shape.dim))

    return [spec(v) for v in graph.input], [spec(v) for v in graph.output]


# ------------------------------------------------------------------ the fixture bundles


@pytest.mark.parametrize("preset", PRESETS)
def test_bundle_manifest_and_files(bundles, checkpoints, preset):
    bundle = Bundle.open(bundles[preset])
    bundle.verify()
    manifest = bundle.manifest
    assert list(manifest.components) == list(COMPONENTS)
    for name, (inputs, outputs) in _expected_io(bundle).items():
        entry = bundle.model(name)
        assert entry.precision == "fp32" == manifest.components[name].default
        assert [(t.name, t.dtype, t.shape) for t in entry.inputs] == inputs
        assert [(t.name, t.dtype, t.shape) for t in entry.outputs] == outputs
        assert _onnx_io(bundle.path(entry.file)) == (inputs, outputs)  # the file says the same
        assert entry.external_data == ()  # tiny models stay in one file
        ver = entry.verification
        assert ver is not None and ver.passed
        assert ver.rel_tolerance == tolerances.EXPORT_REL_TOL["fp32"]
        assert 0 < ver.max_rel_error <= ver.rel_tolerance
        assert [s["inputs"][entry.inputs[0].name][0] for s in ver.shapes] == [1, 3]

    ckpt = checkpoints[preset]
    vae = json.loads((ckpt / "vae" / "config.json").read_text())
    unet = json.loads((ckpt / "unet" / "config.json").read_text())
    text = json.loads((ckpt / "text_encoder" / "config.json").read_text())
    model = manifest.model
    assert model.latent_channels == vae["latent_channels"]
    assert model.scaling_factor == vae["scaling_factor"]
    assert model.vae_scale_factor == 2 ** (len(vae["block_out_channels"]) - 1)
    assert model.sample_size == unet["sample_size"]
    assert model.max_text_length == text["max_position_embeddings"] == manifest.tokenizer.max_length
    assert model.text_embed_dim == unet["cross_attention_dim"]
    assert manifest.source["checkpoint"] == preset and len(manifest.source["sha256"]) == 64

    root = bundle.root
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk == set(manifest.files) | {MANIFEST}  # every file hashed, nothing stray
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "ORTStableDiffusionPipeline"
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    for name in COMPONENTS:  # optimum refuses a component folder without its config.json
        assert (root / name / "config.json").is_file()
    assert manifest.tokenizer.file == "tokenizer/tokenizer.json"
    assert "tokenizer/tokenizer_config.json" in manifest.tokenizer.original_files


@pytest.mark.parametrize("preset", PRESETS)
def test_scheduler_config_is_what_the_pipeline_uses(bundles, checkpoints, preset):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    bundle = Bundle.open(bundles[preset])
    written = json.loads((bundle.root / "scheduler" / "scheduler_config.json").read_text())
    assert written == bundle.manifest.scheduler
    assert written["_class_name"] == "DDIMScheduler"
    pipe = StableDiffusionPipeline.from_pretrained(checkpoints[preset], safety_checker=None)
    source = dict(pipe.scheduler.config)
    for key, value in written.items():
        if key in source and not key.startswith("_"):
            assert value == (list(value) if isinstance(source[key], tuple) else source[key]), key
    ddim = DDIMScheduler.from_config(written)
    assert ddim.config.prediction_type == source["prediction_type"]
    assert ddim.config.steps_offset == 1


def test_scheduler_config_from_an_old_pndm_checkpoint(checkpoints, tmp_path):
    """SD 1.5 ships PNDM without steps_offset/clip_sample: DDIM must not get clip_sample=True."""
    ckpt = tmp_path / "pndm"
    shutil.copytree(checkpoints["tiny"], ckpt)
    config = {
        "_class_name": "PNDMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 0,
    }
    (ckpt / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    index = json.loads((ckpt / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "PNDMScheduler"]
    (ckpt / "model_index.json").write_text(json.dumps(index))
    scheduler = load_checkpoint(ckpt).scheduler
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert "skip_prk_steps" not in scheduler
    assert scheduler["steps_offset"] == 1 and scheduler["clip_sample"] is False
    assert scheduler["beta_schedule"] == "scaled_linear" and scheduler["set_alpha_to_one"] is False


@pytest.mark.parametrize("preset", PRESETS)
def test_onnx_matches_torch_at_a_new_shape(bundles, checkpoints, preset):
    bundle = Bundle.open(bundles[preset])
    ckpt = load_checkpoint(checkpoints[preset])
    geo = ckpt.model
    prompts = ["a green triangle", "two big stars on the right"]
    tokenizer_ids = np.array(encode_like_transformers(ckpt.tokenizer, prompts, geo.max_text_length))
    f = geo.unet_scale_factor
    new_hw = (geo.default_latent + 2 * f, max(f, geo.default_latent // 2))
    for name in COMPONENTS:
        entry = bundle.model(name)
        seen = {tuple(s["inputs"][entry.inputs[0].name]) for s in entry.verification.shapes}
        inputs = sample_inputs(
            name, geo, 2, new_hw, seed=7, input_ids=tokenizer_ids, timestep=500.0
        )
        assert tuple(inputs[entry.inputs[0].name].shape) not in seen  # a shape export never ran
        module = wrap(name, load_component(checkpoints[preset], name))
        result = compare(module, cpu_session(bundle.path(entry.file)), inputs)
        assert result["max_rel_error"] <= tolerances.EXPORT_REL_TOL["fp32"], (name, result)


@pytest.mark.parametrize("preset", PRESETS)
def test_dynamic_axes_take_other_batches_and_sizes(bundles, preset, checkpoints):
    bundle = Bundle.open(bundles[preset])
    geo = load_checkpoint(checkpoints[preset]).model
    f, v, c = geo.unet_scale_factor, geo.vae_scale_factor, geo.latent_channels
    ids = np.zeros((5, geo.max_text_length), dtype=np.int64)
    sessions = {name: cpu_session(bundle.path(bundle.model(name).file)) for name in COMPONENTS}
    for batch, (h, w) in [(1, (f, 3 * f)), (4, (4 * f, 2 * f)), (5, (5 * f, 5 * f))]:
        outs = sessions["text_encoder"].run(None, {"input_ids": ids[:batch]})
        assert outs[0].shape == (batch, geo.max_text_length, geo.text_embed_dim)
        unet_in = sample_inputs("unet", geo, batch, (h, w), seed=batch)
        assert sessions["unet"].run(None, unet_in)[0].shape == (batch, c, h, w)
        dec_in = sample_inputs("vae_decoder", geo, batch, (h, w), seed=batch)
        assert sessions["vae_decoder"].run(None, dec_in)[0].shape == (batch, 3, h * v, w * v)
        enc_in = sample_inputs("vae_encoder", geo, batch, (h, w), seed=batch)
        assert sessions["vae_encoder"].run(None, enc_in)[0].shape == (batch, 2 * c, h, w)


@pytest.mark.parametrize("preset", PRESETS)
def test_tokenizer_json_encodes_like_transformers(bundles, checkpoints, preset):
    from transformers import CLIPTokenizer

    bundle = Bundle.open(bundles[preset])
    tok = bundle.manifest.tokenizer
    reference = CLIPTokenizer.from_pretrained(checkpoints[preset] / "tokenizer")
    assert tok.pad_token_id == reference.pad_token_id
    assert len(reference(PROMPTS[2]).input_ids) > tok.max_length  # truncation really happens
    ours = encode_like_runtime(bundle.path(tok.file), PROMPTS, tok.max_length, tok.pad_token_id)
    theirs = reference(
        PROMPTS, padding="max_length", max_length=tok.max_length, truncation=True
    ).input_ids
    assert ours == [list(ids) for ids in theirs]
    assert all(len(ids) == tok.max_length for ids in ours)


@pytest.mark.parametrize("preset", PRESETS)
def test_bundle_has_vocab_and_merges_for_transformers4(bundles, checkpoints, preset):
    # transformers 4's CLIPTokenizer (optimum's ONNX pipelines load it) reads only these two.
    from transformers import CLIPTokenizer

    folder = bundles[preset] / "tokenizer"
    files = Bundle.open(bundles[preset]).manifest.tokenizer.original_files
    assert {"tokenizer/vocab.json", "tokenizer/merges.txt"} <= set(files)
    from_files = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    reference = CLIPTokenizer.from_pretrained(checkpoints[preset] / "tokenizer")
    assert from_files(PROMPTS).input_ids == reference(PROMPTS).input_ids


# ------------------------------------------------------------------ refusals and failures


def test_refuses_a_non_empty_destination(checkpoints, tiny_bundle, tmp_path):
    dest = tmp_path / "existing"
    shutil.copytree(tiny_bundle, dest)
    before = _tree_digest(dest)
    with pytest.raises(BundleError, match="--force") as err:
        export_checkpoint(checkpoints["tiny"], dest, progress=False)
    assert str(dest) in str(err.value)
    assert _tree_digest(dest) == before

    other = tmp_path / "not-a-bundle"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        export_checkpoint(checkpoints["tiny"], other, force=True, progress=False)
    assert (other / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "not-a-bundle"]


def test_unusable_checkpoints_are_refused(checkpoints, tmp_path):
    dest = tmp_path / "bundle"
    with pytest.raises(ExportError, match="does not exist"):
        export_checkpoint(tmp_path / "missing", dest, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"no model_index\.json"):
        export_checkpoint(tmp_path / "empty", dest, progress=False)

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoints["tiny"], ckpt)
    unet_config = ckpt / "unet" / "config.json"
    original = unet_config.read_text()
    for change, message in [
        ({"in_channels": 5}, "depth or other conditioned"),  # 9 (inpainting) exports
        ({"time_cond_proj_dim": 256}, "time_cond_proj_dim"),
        ({"addition_embed_type": "text_time"}, "addition_embed_type"),
    ]:
        unet_config.write_text(json.dumps({**json.loads(original), **change}))
        with pytest.raises(ExportError, match=message) as err:
            export_checkpoint(ckpt, dest, progress=False)
        assert "\n" not in str(err.value)
    unet_config.write_text(original)
    shutil.rmtree(ckpt / "vae")
    with pytest.raises(ExportError, match="no vae/ folder"):
        export_checkpoint(ckpt, dest, progress=False)
    assert not dest.exists() and not _leftovers(tmp_path, "bundle")


def test_failed_verification_leaves_nothing_behind(monkeypatch, checkpoints, tiny_bundle, tmp_path):
    # Real verification, an impossible tolerance: the first component back fails it.
    monkeypatch.setitem(tolerances.EXPORT_REL_TOL, "fp32", 0.0)
    dest = tmp_path / "new"
    with pytest.raises(ExportError) as err:
        export_checkpoint(checkpoints["tiny"], dest, progress=False)
    message = str(err.value)
    assert "verification failed for the text_encoder (fp32)" in message
    assert "max rel error" in message and "tolerance 0" in message and "--no-verify" in message
    assert not dest.exists() and not _leftovers(tmp_path, "new")
    assert not _helper_processes()

    # With --force the old bundle is only replaced after success, so it survives a failure.
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    with pytest.raises(ExportError, match="verification failed"):
        export_checkpoint(checkpoints["tiny"], old, force=True, progress=False)
    Bundle.open(old).verify()
    assert not _leftovers(tmp_path, "old")


def test_interrupted_export_leaves_nothing_behind(monkeypatch, checkpoints, tmp_path):
    import edgediff.export.workers

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as if Ctrl-C arrived while the first component exports

    monkeypatch.setattr(edgediff.export.workers, "run_job", interrupted)
    dest = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(checkpoints["tiny"], dest, progress=False, workers=2)
    assert not dest.exists() and not _leftovers(tmp_path, "bundle")
    assert not _helper_processes()


# ------------------------------------------------------------------ fp16, transformers-4 tokenizer


@pytest.fixture(scope="module")
def tokenizer_v4_checkpoint(checkpoints, tmp_path_factory) -> Path:
    """The tiny checkpoint with its tokenizer saved the transformers-4 way (no tokenizer.json)."""
    from edgediff.models.clip_vocab import BOS, EOS, write_clip_vocab

    ckpt = tmp_path_factory.mktemp("tok4") / "tiny-tok4"
    shutil.copytree(checkpoints["tiny"], ckpt)
    tok = ckpt / "tokenizer"
    (tok / "tokenizer.json").unlink()
    write_clip_vocab(tok)
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    config = {
        **special,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
    }
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    (tok / "special_tokens_map.json").write_text(json.dumps(special))
    return ckpt


@pytest.fixture(scope="module")
def fp16_bundle(tokenizer_v4_checkpoint, tmp_path_factory) -> Path:
    """The transformers-4-tokenizer checkpoint exported with --fp16 (verified)."""
    dest = tmp_path_factory.mktemp("fp16") / "bundle"
    export_checkpoint(tokenizer_v4_checkpoint, dest, fp16=True, progress=False)
    return dest


def test_fp16_export(fp16_bundle, tiny_bundle):
    bundle = Bundle.open(fp16_bundle)
    bundle.verify()
    fp32 = Bundle.open(tiny_bundle)
    for name in COMPONENTS:
        entry = bundle.model(name)
        half = name in ("text_encoder", "unet")
        assert (
            entry.precision
            == ("fp16" if half else "fp32")
            == bundle.manifest.components[name].default
        )
        assert [t.dtype for t in entry.inputs] == [t.dtype for t in fp32.model(name).inputs]
        assert {t.dtype for t in entry.outputs} == {"float32"}  # the runtime never sees fp16
        ver = entry.verification
        assert ver.passed and ver.rel_tolerance == tolerances.EXPORT_REL_TOL[entry.precision]
        assert ver.max_rel_error <= ver.rel_tolerance
        ratio = (
            bundle.manifest.files[entry.file].bytes
            / fp32.manifest.files[fp32.model(name).file].bytes
        )
        assert (0.4 < ratio < 0.65) if half else (0.99 < ratio < 1.01), (name, ratio)


def test_fp16_keeps_fragile_ops_in_fp32(fp16_bundle):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16_bundle / "unet" / "model.onnx")))
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input]}
    types.update({t.name: t.data_type for t in graph.initializer})
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    by_op = {}
    for node in graph.node:
        by_op.setdefault(node.op_type, []).append(node)
    for node in by_op["Sin"] + by_op["Cos"] + by_op["InstanceNormalization"]:
        assert types[node.input[0]] == fp32, node.name
    assert all(types[n.input[1]] == fp16 for n in by_op["Conv"])  # the weights are fp16
    # The timestep reaches the sin/cos embedding without a float16 round trip.
    timestep_users = [n.op_type for n in graph.node if "timestep" in n.input]
    assert "Cast" not in timestep_users


def test_fp16_upcast_attention_keeps_scores_in_fp32(tiny_bundle, checkpoints, tmp_path):
    from edgediff.graphs.fp16 import convert_to_fp16

    out = tmp_path / "model.onnx"
    convert_to_fp16(tiny_bundle / "unet" / "model.onnx", out, upcast_attention=True)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out)))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in softmax)
    inputs = sample_inputs("unet", load_checkpoint(checkpoints["tiny"]).model, 1, (8, 8), seed=3)
    expected = cpu_session(tiny_bundle / "unet" / "model.onnx").run(None, inputs)[0]
    actual = cpu_session(out).run(None, inputs)[0]
    assert tolerances.max_errors(actual, expected)[1] <= tolerances.EXPORT_REL_TOL["fp16"]


def test_transformers4_tokenizer_folder(fp16_bundle, tokenizer_v4_checkpoint):
    from transformers import CLIPTokenizer

    bundle = Bundle.open(fp16_bundle)
    tok = bundle.manifest.tokenizer
    assert set(tok.original_files) == {
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
    }
    reference = CLIPTokenizer.from_pretrained(tokenizer_v4_checkpoint / "tokenizer")
    prompts = [*PROMPTS, *CHECK_PROMPTS]
    ours = encode_like_runtime(bundle.path(tok.file), prompts, tok.max_length, tok.pad_token_id)
    assert ours == encode_like_transformers(reference, prompts, tok.max_length)


def test_force_replaces_a_bundle_and_no_verify_records_none(
    tokenizer_v4_checkpoint, tiny_bundle, tmp_path
):
    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dest)
    (dest / "unet" / "stray.txt").write_text("from the old bundle")
    old = Bundle.open(dest).manifest
    with pytest.warns(UserWarning, match="without checking"):
        manifest = export_checkpoint(
            tokenizer_v4_checkpoint, dest, force=True, verify=False, progress=False
        )
    bundle = Bundle.open(dest)
    bundle.verify()
    assert bundle.manifest == manifest
    assert manifest.source["sha256"] != old.source["sha256"]
    assert all(bundle.model(name).verification is None for name in COMPONENTS)
    assert not (dest / "unet" / "stray.txt").exists()  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_external_data_goes_to_one_file(monkeypatch, tiny_bundle, checkpoints, tmp_path):
    """Above 2 GB weights go to one model.onnx.data; forced here with a 0-byte threshold."""
    import onnx_ir as ir

    from edgediff.export import onnx_export
    from edgediff.graphs import files, fp16

    source = tiny_bundle / "unet" / "model.onnx"
    in_memory = tmp_path / "in-memory" / "model.onnx"
    in_memory.parent.mkdir()
    assert fp16.convert_to_fp16(source, in_memory) == ()  # small: one file

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    fp32 = tmp_path / "fp32" / "model.onnx"
    fp32.parent.mkdir()
    assert onnx_export.save_ir(ir.load(source), fp32) == (fp32.with_name("model.onnx.data"),)
    files.check_model(fp32)
    # fp16 from a model with external data streams the weights instead of loading them.
    half = tmp_path / "fp16" / "model.onnx"
    half.parent.mkdir()
    assert fp16.convert_to_fp16(fp32, half) == (half.with_name("model.onnx.data"),)
    files.check_model(half)
    for folder in (fp32.parent, half.parent):
        assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.data"]

    geo = load_checkpoint(checkpoints["tiny"]).model
    inputs = sample_inputs("unet", geo, 2, (12, 10), seed=5)
    expected = cpu_session(source).run(None, inputs)[0]
    np.testing.assert_array_equal(cpu_session(fp32).run(None, inputs)[0], expected)
    streamed = cpu_session(half).run(None, inputs)[0]
    np.testing.assert_array_equal(streamed, cpu_session(in_memory).run(None, inputs)[0])
    assert tolerances.max_errors(streamed, expected)[1] <= tolerances.EXPORT_REL_TOL["fp16"]


def test_a_bundle_recovers_into_the_checkpoint_it_was_exported_from(checkpoints, tmp_path):
    # The shipped model's PyTorch weights were rebuilt from its bundle this way for distilling.
    import subprocess
    import sys

    from safetensors.torch import load_file

    bundle, out = tmp_path / "bundle", tmp_path / "recovered"
    export_checkpoint(checkpoints["tiny"], bundle, progress=False)
    script = Path(__file__).resolve().parent.parent / "scripts" / "bundle_to_checkpoint.py"
    command = [sys.executable, str(script), str(bundle), str(out)]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    for sub in ("unet", "text_encoder", "vae"):
        (original,) = (checkpoints["tiny"] / sub).glob("*.safetensors")
        (recovered,) = (out / sub).glob("*.safetensors")
        expected, got = load_file(original), load_file(recovered)
        assert expected.keys() == got.keys(), sub
        for key in expected:
            assert torch.equal(expected[key].float(), got[key]), f"{sub}: {key}"
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode != 0 and "exists" in again.stderr
