"""The model shipped inside the package: it loads with no arguments, passes its hashes, is small,
and draws what it is asked (read back by the shipped evaluator)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgediff.bench.caption_eval import generate_for
from edgediff.cli import cli
from edgediff.data.shapes import eval_prompts
from edgediff.metrics.evaluator import Evaluator
from edgediff.metrics.quality import attribute_accuracy
from edgediff.runtime import Bundle, Pipeline
from edgediff.runtime.pipeline import DEFAULT_BUNDLE
from edgediff.runtime.request import DEFAULT_GUIDANCE, DEFAULT_STEPS
from edgediff.tolerances import QUANT_TARGET_PSNR_DB

MAX_BYTES = 25 * 2**20


def test_shipped_bundle_passes_its_hashes_and_is_small():
    bundle = Bundle.open(DEFAULT_BUNDLE)
    bundle.verify()
    total = sum(p.stat().st_size for p in DEFAULT_BUNDLE.rglob("*") if p.is_file())
    assert total < MAX_BYTES, f"{total / 2**20:.1f} MB"
    assert bundle.manifest.model.default_image_size == 64
    assert bundle.manifest.model.size_multiple == 16


@pytest.mark.parametrize("precision", [None, "int8"])
def test_pipeline_load_without_arguments_draws_what_prompts_say(precision):
    pipe = Pipeline.load(precision=precision)
    attrs = eval_prompts(24, seed=123)
    images = generate_for(pipe, attrs, steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE, seed=123)
    assert images.shape == (24, 64, 64, 3)
    acc = attribute_accuracy(Evaluator.load().read(images), attrs)
    # Far above chance (12.5 % colour, 20 % position); the full measurement is `edgediff eval`.
    assert acc["colour"] >= 0.6 and acc["position"] >= 0.5, acc


def test_shipped_int8_unet_records_how_it_was_made():
    bundle = Bundle.open(DEFAULT_BUNDLE)
    record = bundle.manifest.calibration
    assert record is not None
    assert (record.steps, record.guidance) == (DEFAULT_STEPS, DEFAULT_GUIDANCE)
    quantization = bundle.model("unet", "int8").quantization
    assert quantization.psnr_db >= QUANT_TARGET_PSNR_DB
    assert quantization.sensitivity in bundle.manifest.files


def test_generate_and_eval_use_the_shipped_model_by_default(tmp_path):
    out = tmp_path / "x.png"
    result = CliRunner().invoke(
        cli, ["generate", "a big red circle on the left", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(out))
    assert image.shape == (64, 64, 3)
    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    assert "files match their sha256" in result.output
    result = CliRunner().invoke(cli, ["eval", "--prompts", "8", "--held-out", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert set(report) == {"settings", "seen pairs", "held-out pairs"}
    assert report["seen pairs"]["prompts"] == 8
    assert set(report["seen pairs"]["accuracy"]) == {"colour", "shape", "size", "position", "all"}
