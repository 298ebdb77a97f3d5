"""Calibration: real inputs along real trajectories, every timestep and both CFG halves (of a
teacher's U-Net; a distilled student's calls are batch N with the guidance scale)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgediff.bundle.reader import Bundle
from edgediff.calibration.capture import (
    batch_seed,
    calibrate,
    calibration_prompts,
    calibration_record,
)
from edgediff.calibration.prompts import DEFAULT_PROMPTS, make_default_prompts, read_prompts
from edgediff.data import shapes
from edgediff.data.shapes import EVAL_SEED, eval_prompts
from edgediff.errors import BundleError, InputError
from edgediff.runtime.pipeline import DEFAULT_BUNDLE, Pipeline

STEPS, SAMPLES, BATCH, GUIDANCE = 4, 4, 2, 3.0


@pytest.fixture(scope="module")
def calibrated(tiny_bundle, tmp_path_factory):
    """A copy of the test teacher bundle (classifier-free guidance) calibrated on 4 default
    prompts, 4 steps, batches of 2."""
    return _calibrated_copy(tiny_bundle, tmp_path_factory.mktemp("calibrated") / "bundle")


def _calibrated_copy(source, root):
    shutil.copytree(source, root)
    calibrate(
        root,
        read_prompts(),
        samples=SAMPLES,
        steps=STEPS,
        guidance=GUIDANCE,
        seed=5,
        batch_size=BATCH,
        force=True,
    )
    return Bundle.open(root)


def _load(bundle: Bundle, component: str) -> dict[str, np.ndarray]:
    return {k: np.load(p) for k, p in calibration_record(bundle, component).items()}


def test_unet_inputs_cover_every_timestep_and_both_cfg_halves(calibrated):
    record = calibrated.manifest.calibration
    pipeline = Pipeline.load(calibrated)
    planned = [int(t) for t in pipeline.scheduler.timesteps(STEPS)]
    assert list(record.timesteps) == planned

    unet = _load(calibrated, "unet")
    calls = SAMPLES // BATCH * STEPS
    assert unet["sample"].shape == (calls, 2 * BATCH, *_latent(calibrated))
    # Each batch walks the whole trajectory, in order.
    assert unet["timestep"].reshape(-1).tolist() == planned * (SAMPLES // BATCH)

    # Both halves of every call: the same latents, with the unconditional ("") and the
    # conditional embeddings of the prompts the batch sampled.
    prompts = calibration_prompts(calibrated)
    assert prompts == read_prompts()[:SAMPLES]
    np.testing.assert_array_equal(unet["sample"][:, :BATCH], unet["sample"][:, BATCH:])
    for call in range(calls):
        batch = prompts[call // STEPS * BATCH : (call // STEPS + 1) * BATCH]
        expected = pipeline.encode(batch, [""] * BATCH, 1)
        np.testing.assert_allclose(unet["encoder_hidden_states"][call], expected, atol=1e-6)


def _latent(bundle: Bundle) -> tuple[int, int, int]:
    config = bundle.manifest.model
    return (config.latent_channels, config.default_latent, config.default_latent)


def test_text_encoder_and_vae_decoder_inputs_are_recorded(calibrated):
    ids = _load(calibrated, "text_encoder")["input_ids"]
    tokens = calibrated.manifest.model.max_text_length
    assert ids.shape == (SAMPLES // BATCH, 2 * BATCH, tokens)
    latents = _load(calibrated, "vae_decoder")["latent_sample"]
    assert latents.shape == (SAMPLES // BATCH, BATCH, *_latent(calibrated))
    # The decoder saw the final latents, divided by the scaling factor.
    scale = calibrated.manifest.model.scaling_factor
    final = Pipeline.load(calibrated)(
        read_prompts()[:BATCH],
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        seed=batch_seed(5, 0),
        output_type="latent",
    )
    np.testing.assert_allclose(latents[0], final / scale, rtol=1e-5, atol=1e-6)


def test_a_distilled_student_is_recorded_at_batch_n_with_its_guidance_scale(tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, root)
    calibrate(root, read_prompts(), samples=4, steps=1, guidance=5.0, batch_size=2, force=True)
    bundle = Bundle.open(root)
    recorded = set(bundle.manifest.calibration.inputs)
    assert recorded == {"text_encoder", "unet.steps-1", "vae_decoder"}
    unet = _load(bundle, "unet.steps-1")
    assert unet["sample"].shape == (2, 2, *_latent(bundle))  # one pass of the batch a step
    np.testing.assert_array_equal(unet["guidance"], np.full((2, 2), 5.0, np.float32))
    assert _load(bundle, "text_encoder")["input_ids"].shape[:2] == (2, 2)  # no "" half


def test_calibration_is_reproducible_for_a_seed(calibrated, tiny_bundle, tmp_path):
    other = _calibrated_copy(tiny_bundle, tmp_path / "again")
    for rel in calibrated.manifest.calibration.files:
        assert other.manifest.files[rel].sha256 == calibrated.manifest.files[rel].sha256, rel
    other.verify()  # every recorded file is hashed in the manifest


def test_calibration_prompts_never_meet_evaluation_prompts():
    shipped = read_prompts(DEFAULT_PROMPTS)
    assert shipped == make_default_prompts()
    assert len(set(shipped)) == len(shipped) == 64
    # No text overlap with any evaluation prompt (they all use the canonical phrasing) ...
    canonical = {shapes.canonical_caption(a) for a in shapes.all_attributes()}
    assert not canonical & set(shipped)
    # ... and no attribute set the default evaluation draws, seen or held out.
    by_caption = {
        shapes.caption(a, k): a.as_tuple()
        for a in shapes.all_attributes()
        for k in range(shapes.NUM_PHRASINGS)
    }
    calibrated_sets = {by_caption[p] for p in shipped}
    evaluated = {a.as_tuple() for a in eval_prompts(256, EVAL_SEED)}
    evaluated |= {a.as_tuple() for a in eval_prompts(64, EVAL_SEED, held_out=True)}
    assert not calibrated_sets & evaluated


def test_calibrate_refuses_to_overwrite_and_bad_input(calibrated, tmp_path):
    with pytest.raises(BundleError, match=r"already holds calibration data.*--force"):
        calibrate(calibrated.root, read_prompts(), samples=SAMPLES, steps=STEPS)
    with pytest.raises(InputError, match="do not split into batches of 3"):
        calibrate(calibrated.root, read_prompts(), samples=4, batch_size=3, force=True)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="holds no prompts"):
        read_prompts(empty)
    with pytest.raises(InputError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_calibrate_command_records_at_a_size_and_says_what_next(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from edgediff.cli import cli

    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, root)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square on the left\n")
    args = [
        "calibrate",
        str(root),
        "--prompts",
        str(prompts),
        "--samples",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--height",
        "32",
        "--width",
        "48",
    ]
    result = CliRunner().invoke(cli, [*args, "--force"])
    assert result.exit_code == 0, result.output
    bundle = Bundle.open(root)
    assert (bundle.manifest.calibration.height, bundle.manifest.calibration.width) == (32, 48)
    assert _load(bundle, "unet")["sample"].shape == (2, 4, 4, 8, 12)  # 2 steps, [x; x] of 2
    assert f"next: edgediff quantize {root} --precision int8" in result.output
    assert (root / "calibration/prompts.txt").read_text().splitlines() == [
        "a red circle",
        "a blue square on the left",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "already holds calibration data" in result.output
