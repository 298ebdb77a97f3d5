"""edgediff bench: metrics against known values, warm-up exclusion, the report, resuming."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgediff.bench.configs import Config, expand, parse_steps
from edgediff.bench.pareto import pareto_front
from edgediff.bench.run import BenchSettings, run_bench
from edgediff.errors import InputError
from edgediff.metrics.quality import psnr, ssim
from edgediff.metrics.timing import measure_latency
from edgediff.runtime.pipeline import DEFAULT_BUNDLE

SETTINGS = BenchSettings(prompts=8, runs=2, warmup=1)
FP32, INT8 = Config("ort-cpu", "fp32", 2), Config("ort-cpu", "int8", 2)


# ---------------------------------------------------------------- metrics and timing


def test_psnr_is_infinite_for_identical_arrays_and_exact_for_known_noise():
    reference = np.random.default_rng(0).random((4, 16, 16, 3))
    assert psnr(reference, reference) == math.inf
    sigma = 0.01  # +-sigma everywhere: mean squared error exactly sigma^2
    noisy = reference + sigma * np.where(np.arange(reference.size) % 2, 1, -1).reshape(
        reference.shape
    )
    assert psnr(noisy, reference, peak=1.0) == pytest.approx(40.0, abs=1e-9)
    assert psnr(noisy, reference, peak=2.0) == pytest.approx(40.0 + 20 * math.log10(2), abs=1e-9)


def test_ssim_is_one_for_identical_images_and_matches_known_values():
    rng = np.random.default_rng(0)
    a = rng.random((2, 32, 32, 3))
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    # scikit-image 0.26 structural_similarity(gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=1), averaged over the two images.
    assert ssim(b, a) == pytest.approx(0.9463194509628208, abs=1e-12)
    # Flat images: SSIM reduces to the luminance term (2ab + c1) / (a^2 + b^2 + c1).
    flat_a, flat_b = np.full((1, 16, 16, 1), 0.2), np.full((1, 16, 16, 1), 0.6)
    c1 = 0.01**2
    assert ssim(flat_a, flat_b) == pytest.approx((2 * 0.12 + c1) / (0.04 + 0.36 + c1), abs=1e-12)
    with pytest.raises(ValueError, match="sides >= 11"):
        ssim(a[:, :8, :8], a[:, :8, :8])


def test_timing_excludes_the_warm_up_calls():
    calls = []

    def call():
        calls.append(None)
        time.sleep(0.3 if len(calls) <= 2 else 0.001)  # the first two are slow, as warm-ups are

    latency = measure_latency(call, runs=5, warmup=2)
    assert len(calls) == 7 and latency.runs == 5
    assert latency.p90 < 0.1 and latency.median < 0.1


def test_pareto_front_keeps_what_nothing_beats_on_both_axes():
    points = [(1.0, 50.0), (2.0, 90.0), (3.0, 80.0), (0.5, 20.0), (2.0, 90.0), (4.0, 95.0)]
    assert pareto_front(points) == [3, 0, 1, 4, 5]  # (3.0, 80) loses to (2.0, 90)


def test_configurations_put_references_first():
    configs = expand(["ort-cpu"], ["int8", "fp32"], parse_steps("4,2"))
    assert [c.id for c in configs] == [
        "ort-cpu/fp32/4", "ort-cpu/fp32/2", "ort-cpu/int8/4", "ort-cpu/int8/2",
    ]  # fmt: skip
    with pytest.raises(InputError, match="positive integers"):
        parse_steps("2,x")


# ---------------------------------------------------------------- the report


def test_report_has_its_schema_and_all_three_files(tmp_path):
    report = run_bench(DEFAULT_BUNDLE, [FP32, INT8], SETTINGS, tmp_path, progress=False)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == report
    assert on_disk["format"] == "edgediff-bench" and on_disk["settings"]["prompts"] == 8
    assert set(on_disk["machine"]) >= {"platform", "cpus", "onnxruntime", "edgediff"}
    assert [r["id"] for r in on_disk["rows"]] == ["ort-cpu/fp32/2", "ort-cpu/int8/2"]
    for row in on_disk["rows"]:
        assert set(row["latency_s"]) == {"text_encoder", "unet_step", "vae_decoder", "end_to_end"}
        for stat in row["latency_s"].values():
            assert 0 < stat["median"] <= stat["p90"] and stat["runs"] == 2
        assert row["images_per_s"] == pytest.approx(
            1 / row["latency_s"]["end_to_end"]["median"], rel=1e-2
        )
        assert row["peak_rss_mb"] > 50 and row["gpu_memory_mb"] is None
        assert set(row["file_mb"]) == {"text_encoder", "unet", "vae_decoder"}
        assert set(row["accuracy"]) == {
            "latent_psnr_db", "image_psnr_db", "image_ssim", "caption_accuracy", "kid",
        }  # fmt: skip
    fp32, int8 = (r["accuracy"] for r in on_disk["rows"])
    assert fp32["latent_psnr_db"] is None and fp32["image_ssim"] == 1.0  # it is the reference
    assert 20 < int8["latent_psnr_db"] < 60 and 0.5 < int8["image_ssim"] < 1.0
    assert on_disk["rows"][1]["file_mb"]["unet"] < on_disk["rows"][0]["file_mb"]["unet"] / 2
    markdown = (tmp_path / "report.md").read_text()
    assert (
        "| `ort-cpu/int8/2` |" in markdown and "![accuracy against latency](pareto.png)" in markdown
    )
    with Image.open(tmp_path / "pareto.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 400


def test_a_restarted_bench_reuses_finished_rows_and_refuses_other_settings(tmp_path):
    first = run_bench(DEFAULT_BUNDLE, [FP32], SETTINGS, tmp_path, progress=False)
    resumed = run_bench(DEFAULT_BUNDLE, [FP32, INT8], SETTINGS, tmp_path, progress=False)
    assert resumed["rows"][0] == first["rows"][0]  # reused as it was, not measured again
    fresh = run_bench(DEFAULT_BUNDLE, [FP32, INT8], SETTINGS, tmp_path / "fresh", progress=False)
    assert resumed["rows"][1]["accuracy"] == fresh["rows"][1]["accuracy"]
    with pytest.raises(InputError, match=r"other settings.*--force"):
        run_bench(
            DEFAULT_BUNDLE, [FP32], BenchSettings(prompts=4, runs=2), tmp_path, progress=False
        )


def test_an_interrupted_bench_command_picks_up_where_it_stopped(tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "edgediff.cli", "bench", "--steps", "2,1", "--decoders", "full",
        "--prompts", "8", "--runs", "2", "--warmup", "1", "--out", str(out),
    ]  # fmt: skip
    # Ctrl-C as a terminal sends it. A test runner started in the background (as CI may be)
    # has SIGINT ignored, which children inherit: give the bench the default disposition.
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    report = out / "report.json"
    deadline = time.monotonic() + 300
    while not report.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0, "the bench finished before it could be interrupted"
    finished = json.loads(report.read_text())["rows"]
    assert 1 <= len(finished) < 4
    assert not list(out.rglob(".tmp-*")), "an interrupted write left a temporary file"

    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = json.loads(report.read_text())["rows"]
    assert [r["id"] for r in rows] == [
        "ort-cpu/fp32/2", "ort-cpu/fp32/1", "ort-cpu/int8/2", "ort-cpu/int8/1",
    ]  # fmt: skip
    assert rows[: len(finished)] == finished
    assert all(Path(out, name).is_file() for name in ("report.md", "pareto.png"))


def test_bad_requests_fail_in_one_line_before_anything_is_written(tmp_path):
    from click.testing import CliRunner

    from edgediff.cli import cli

    out = tmp_path / "out"
    for args, message in (
        (["--precisions", "fp16"], "the bundle has no fp16 unet"),
        (["--steps", "0,2"], "--steps '0,2' must list positive integers"),
        (["--backends", "ort-gpu"], "unknown backend 'ort-gpu'"),
        ([str(tmp_path / "missing")], "bundle folder"),
    ):
        result = CliRunner().invoke(cli, ["bench", *args, "--out", str(out)])
        assert result.exit_code == 1 and message in result.output, result.output
        assert result.output.count("\n") == 1
    assert not out.exists()
