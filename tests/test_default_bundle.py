"""The model shipped inside the package: it loads with no arguments, passes its hashes, is small,
and draws what it is asked (read back by the shipped evaluator)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgediff.bench.caption_eval import generate_for
from edgediff.bundle.schema import TINY_DECODER
from edgediff.cli import cli
from edgediff.data.shapes import eval_prompts
from edgediff.metrics.evaluator import Evaluator
from edgediff.metrics.quality import attribute_accuracy
from edgediff.runtime import Bundle, Pipeline
from edgediff.runtime.pipeline import DEFAULT_BUNDLE
from edgediff.tolerances import QUANT_TARGET_PSNR_DB

MAX_BYTES = 25 * 2**20


def test_shipped_bundle_passes_its_hashes_and_is_small():
    bundle = Bundle.open(DEFAULT_BUNDLE)
    bundle.verify()
    total = sum(p.stat().st_size for p in DEFAULT_BUNDLE.rglob("*") if p.is_file())
    assert total < MAX_BYTES, f"{total / 2**20:.1f} MB"
    assert bundle.manifest.model.default_image_size == 64
    assert bundle.manifest.model.size_multiple == 16


def test_shipped_model_is_distilled_to_two_steps_and_one_with_a_tiny_decoder():
    bundle = Bundle.open(DEFAULT_BUNDLE)
    assert bundle.manifest.recommended_steps == 2
    for steps in (2, 1):
        record = bundle.model(bundle.unet_for(steps)).distillation
        assert record is not None and record.guidance_embedded and steps in record.steps
        low, high = record.guidance_range
        assert low <= bundle.manifest.recommended_guidance <= high
    assert bundle.unet_for(1) == "unet.steps-1"
    assert TINY_DECODER in bundle.manifest.components


@pytest.mark.parametrize(
    ("steps", "precision", "decoder"),
    [(None, None, "full"), (None, "int8", "full"), (1, None, "tiny"), (1, "int8", "full")],
)
def test_pipeline_load_without_arguments_draws_what_prompts_say(steps, precision, decoder):
    with Pipeline.load(precision=precision, decoder=decoder) as pipe:
        attrs = eval_prompts(24, seed=123)
        steps = steps or pipe.default_steps
        guidance = pipe.guidance_for(steps)
        images = generate_for(pipe, attrs, steps=steps, guidance=guidance, seed=123)
    assert images.shape == (24, 64, 64, 3)
    acc = attribute_accuracy(Evaluator.load().read(images), attrs)
    # Far above chance (12.5 % colour, 20 % position); the full measurement is `edgediff eval`.
    assert acc["colour"] >= 0.6 and acc["position"] >= 0.5, acc


@pytest.mark.parametrize("unet", ["unet", "unet.steps-1"])
def test_shipped_int8_unets_record_how_they_were_made(unet):
    bundle = Bundle.open(DEFAULT_BUNDLE)
    record = bundle.manifest.calibration
    assert record is not None
    # The last recording is at the recommended count and guidance.
    recommended = (bundle.manifest.recommended_steps, bundle.manifest.recommended_guidance)
    assert (record.steps, record.guidance) == recommended
    quantization = bundle.model(unet, "int8").quantization
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
