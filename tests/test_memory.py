"""Memory: fused attention, memory modes and what they keep, against real ONNX Runtime sessions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from edgediff.bundle.edit import edit
from edgediff.bundle.reader import Bundle
from edgediff.errors import BackendError, InputError
from edgediff.metrics.quality import psnr
from edgediff.runtime import Pipeline
from edgediff.runtime.backends.onnx_proto import load_model
from edgediff.runtime.backends.onnxruntime import OrtBackend
from edgediff.runtime.backends.ort_attention import fuse_attention
from edgediff.runtime.memory import (
    ACTIVATION_MAPS,
    SYNCED_TILE_MAPS,
    estimate_memory,
    large_vae_buffers,
)
from edgediff.runtime.pipeline import DEFAULT_BUNDLE
from edgediff.tolerances import max_errors

UNET = DEFAULT_BUNDLE / "unet" / "model.onnx"
PROMPT = "a red circle above a blue square"


def _unet_feeds(batch: int = 2, size: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "sample": rng.standard_normal((batch, 4, size, size), dtype=np.float32),
        "timestep": np.array([500], np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 16, 64), dtype=np.float32),
        "guidance": np.full((batch,), 5.0, np.float32),
    }


def _run(model: str | bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_every_attention_of_the_shipped_unet_fuses_and_computes_the_same():
    data = UNET.read_bytes()
    model = load_model(data)
    softmaxes = sum(n.op_type == "Softmax" for n in model.graph.node)
    assert softmaxes > 0
    assert fuse_attention(model) == softmaxes
    ops = [n.op_type for n in model.graph.node]
    assert "Softmax" not in ops
    assert ops.count("MultiHeadAttention") == softmaxes
    feeds = _unet_feeds()
    _, rel = max_errors(_run(model.SerializeToString(), feeds), _run(str(UNET), feeds))
    assert rel < 1e-5


def test_round_trip_through_the_declared_fields_loses_nothing():
    """Fields the runtime does not declare (value infos, doc strings, ...) survive as unknown."""
    data = UNET.read_bytes()
    again = load_model(data).SerializeToString()
    assert len(again) == len(data)
    feeds = _unet_feeds(batch=1, size=16)
    assert np.array_equal(_run(again, feeds), _run(data, feeds))


def test_fused_model_with_external_weights_loads_from_another_folder(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx", reason="writing external weights needs onnx")
    folder = tmp_path / "unet"
    folder.mkdir()
    onnx.save_model(
        onnx.load(str(UNET)),
        str(folder / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    assert (folder / "model.onnx.data").stat().st_size > 100_000
    monkeypatch.chdir(tmp_path.parent)  # ORT must find the weights beside the file, not in cwd
    backend = OrtBackend("ort-cpu", threads=2)
    session = backend.load(folder / "model.onnx")
    feeds = _unet_feeds()
    _, rel = max_errors(session.run(feeds)["out_sample"], _run(str(UNET), feeds))
    backend.close()
    assert rel < 1e-5


def test_fused_and_unfused_pipelines_make_the_same_images():
    images = {}
    for fuse in (True, False):
        backend = OrtBackend("ort-cpu", threads=2, fuse_attention=fuse)
        with Pipeline.load(backend=backend) as pipe:
            images[fuse] = pipe(PROMPT, seed=3, height=128, width=96, output_type="np")
        backend.close()
    assert np.abs(images[True] - images[False]).max() < 1e-4


def test_each_memory_mode_makes_identical_images_and_keeps_what_it_says():
    images, kept = {}, {}
    for memory in ("fast", "balanced", "low"):
        with Pipeline.load(memory=memory) as pipe:
            assert pipe.memory == memory
            loaded = set(pipe.sessions)
            images[memory] = pipe([PROMPT, "a green triangle"], seed=1, output_type="np")
            kept[memory] = (loaded, set(pipe.sessions))
    assert np.array_equal(images["fast"], images["balanced"])
    assert np.array_equal(images["fast"], images["low"])
    assert kept["low"] == (set(), set())  # loaded for each stage, released after it
    assert len(kept["balanced"][0]) == 3 and kept["balanced"][0] == kept["balanced"][1]


def test_a_vae_without_the_arena_decodes_and_tiles_the_same():
    # SD-sized VAEs run without ONNX Runtime's arena outside "fast" (large_vae_buffers); the
    # shipped one keeps it, so ask for it here: same images, plain and tiled (2×1 tiles).
    images = {}
    for arena in (True, False):
        options = {"threads": 2, "vae_arena": arena}
        with Pipeline.load(memory="balanced", backend_options=options) as pipe:
            assert pipe.backend.vae_arena is arena
            images[arena] = [
                pipe(PROMPT, seed=2, height=320, width=256, output_type="np", vae_tiling=tiled)
                for tiled in (False, True)
            ]
    for with_arena, without in zip(images[True], images[False], strict=True):
        assert np.array_equal(with_arena, without)
    with pytest.raises(BackendError, match="vae_arena") as caught:
        OrtBackend("ort-cpu", vae_arena="no")
    assert "\n" not in str(caught.value)


def test_only_a_vae_with_large_feature_maps_goes_without_the_arena(tmp_path):
    shipped = Bundle.open(DEFAULT_BUNDLE)
    assert not large_vae_buffers(shipped)  # 16 channels at 64²: 256 KiB a map
    with Pipeline.load() as pipe:
        assert pipe.backend.vae_arena is True
    # The same bundle with SD 1.5's decoder width and default size: 128 MiB a map.
    copy = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, copy)
    with edit(copy, "test") as tx:
        config = json.loads(tx.read_path("vae_decoder/config.json").read_text())
        config["block_out_channels"] = [128, 512]
        config["mid_block_add_attention"] = True
        tx.write_file("vae_decoder/config.json", json.dumps(config))
        manifest = tx.bundle.manifest
        model = replace(manifest.model, sample_size=64, vae_scale_factor=8)
        tx.set_manifest(replace(manifest, model=model))
    assert large_vae_buffers(Bundle.open(copy))
    # Tiled, a VAE whose mid-block attends runs that block whole (vae_split): its estimate
    # grows with the image; without that attention it stays one tile's.
    files = {"vae_decoder": ("vae_decoder/model.onnx",)}
    tiled = [
        estimate_memory(bundle, files, 1, side, side, 2, vae_tile=512).activations["vae_decoder"]
        for bundle in (Bundle.open(copy), shipped)
        for side in (1024, 8192)
    ]
    assert tiled[1] > 4 * tiled[0] and tiled[2] == tiled[3]


def test_tiles_that_share_statistics_are_estimated_with_more_maps():
    # Measured on SD 1.5's decoder: 17.5 maps a synced tile against 9.9 a plain one. A VAE
    # without GroupNorms (the tiny decoder) tiles plain either way.
    shipped = Bundle.open(DEFAULT_BUNDLE)

    def tile(component: str, synced: bool) -> int:
        files = {component: (f"{component}/model.onnx",)}
        estimate = estimate_memory(shipped, files, 1, 512, 512, 2, 256, synced_tiles=synced)
        return estimate.activations[component]

    ratio = SYNCED_TILE_MAPS / ACTIVATION_MAPS["vae_decoder"]
    assert tile("vae_decoder", True) == pytest.approx(tile("vae_decoder", False) * ratio, rel=1e-6)
    assert tile("vae_decoder.tiny", True) == tile("vae_decoder.tiny", False)
    with Pipeline.load() as pipe:  # ONNX Runtime shares the statistics
        assert pipe.memory_estimate(1, 512, 512, vae_tiling=True).activations[pipe.decoder] == (
            tile("vae_decoder", True)
        )


def test_low_memory_releases_its_models_when_a_call_fails():
    with Pipeline.load(memory="low") as pipe:
        with pytest.raises(InputError):
            pipe(PROMPT, latents=np.zeros((1, 4, 8, 8), np.float32), height=128)
        assert pipe.sessions == {}
        assert pipe(PROMPT, seed=0, output_type="np").shape[0] == 1


@pytest.mark.parametrize("memory", ["", "tiny", None, 3])
def test_unknown_memory_mode_is_refused_by_name(memory):
    with pytest.raises(InputError, match="unknown memory mode"):
        Pipeline.load(memory=memory)


def test_runtime_loads_without_importing_onnx():
    """The graph rewrite reads the protobuf itself: `import onnx` costs seconds."""
    code = (
        "import sys; from edgediff.runtime import Pipeline; p = Pipeline.load(); "
        "p('x', seed=0, output_type='np'); assert 'onnx' not in sys.modules, 'onnx imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


_MEASURE = """
import json, sys
from edgediff.runtime import Pipeline
memory, size = sys.argv[1], int(sys.argv[2])
pipe = Pipeline.load(memory=memory, backend_options={"threads": 2})
tiled = pipe.needs_vae_tiling(1, size, size, 7.5, 4)
pipe("a red circle", seed=0, height=size, width=size, num_inference_steps=4, guidance_scale=7.5,
     output_type="np")
estimate = pipe.memory_estimate(1, size, size, 7.5, 4, tiled).peak(memory)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking (pytest) process.
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({"estimate": estimate, "peak": peak}))
"""


@pytest.mark.parametrize("memory", ["low", "balanced", "fast"])
@pytest.mark.parametrize("size", [64, 512])
def test_memory_estimate_is_within_30_percent_of_measured_peak(memory, size):
    """The shipped model in a fresh process: at 512² its activations outweigh its weights."""
    import json

    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, memory, str(size)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    row = json.loads(out.strip().splitlines()[-1])
    ratio = row["estimate"] / row["peak"]
    print(f"{memory} {size}²: estimate {row['estimate'] / 2**20:.0f} MiB, measured "
          f"{row['peak'] / 2**20:.0f} MiB ({ratio:.2f})")  # fmt: skip
    assert 0.7 <= ratio <= 1.3


def test_modes_order_by_estimate_and_info_prints_them(tmp_path):
    with Pipeline.load(memory="low", verify=False) as pipe:
        estimate = pipe.memory_estimate(1, 512, 512)
        assert estimate.peak("low") <= estimate.peak("balanced") <= estimate.peak("fast")
    proc = subprocess.run(
        [sys.executable, "-m", "edgediff.cli", "info"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "estimated peak memory" in proc.stdout
    for memory in ("low", "balanced", "fast"):
        assert f"\n{memory} " in proc.stdout


def test_generate_cli_takes_a_memory_mode_and_tiling(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from edgediff.cli import cli

    outputs = {}
    for memory, tiling in (("low", "--vae-tiling"), ("fast", "--no-vae-tiling")):
        out = tmp_path / f"{memory}.png"
        args = ["generate", "a red circle", "--seed", "2", "--height", "320", "--width", "320"]
        result = CliRunner().invoke(cli, [*args, "--memory", memory, tiling, "--out", str(out)])
        assert result.exit_code == 0, result.output
        outputs[memory] = np.asarray(Image.open(out), dtype=np.float64)
    assert outputs["low"].shape == (320, 320, 3)
    # 320² is 2×2 tiles of the shipped VAE (factor 4): close to the whole image, not equal.
    assert not np.array_equal(outputs["low"], outputs["fast"])
    assert psnr(outputs["low"], outputs["fast"], peak=255.0) >= 40.0
    result = CliRunner().invoke(cli, ["generate", "x", "--memory", "tiny"])
    assert result.exit_code == 2 and "'tiny' is not one of" in result.output
