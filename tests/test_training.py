"""Trainers: each takes a few steps and its loss falls; a killed run resumes to the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from edgediff.models.presets import build_random_pipeline  # noqa: E402
from edgediff.models.training.clip import retrieval_accuracy, train_clip  # noqa: E402
from edgediff.models.training.recipes import ClipRecipe, UnetRecipe, VaeRecipe  # noqa: E402
from edgediff.models.training.unet import train_unet  # noqa: E402
from edgediff.models.training.vae import train_vae  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _falls(losses: list[float], k: int = 5) -> bool:
    return sum(losses[-k:]) / k < 0.8 * sum(losses[:k]) / k


def _losses(work_dir: Path, stage: str) -> list[float]:
    return torch.load(work_dir / stage / "done.pt", weights_only=False)["losses"]


def test_vae_loss_falls_and_scale_is_measured(tmp_path):
    pipe = build_random_pipeline("shapes")
    train_vae(pipe.vae, VaeRecipe(steps=25, batch_size=8, lr=2e-3), tmp_path / "vae", 0, False)
    assert _falls(_losses(tmp_path, "vae"))
    assert 0.05 < pipe.vae.config.scaling_factor < 20


def test_clip_loss_falls(tmp_path):
    pipe = build_random_pipeline("shapes")
    recipe = ClipRecipe(steps=40, batch_size=32, lr=2e-3)
    heads = train_clip(pipe.text_encoder, pipe.tokenizer, recipe, tmp_path / "clip", 0, False)
    assert _falls(_losses(tmp_path, "clip"), k=8)
    acc = retrieval_accuracy(pipe.text_encoder, pipe.tokenizer, heads, seed=0, n=64)
    assert set(acc) == {"colour", "shape", "size", "position"}


def test_unet_loss_falls_and_ema_weights_are_loaded(tmp_path):
    pipe = build_random_pipeline("shapes")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    recipe = UnetRecipe(steps=40, batch_size=8, lr=2e-3, warmup=5, ema_decay=0.9)
    train_unet(
        pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer, dict(pipe.scheduler.config),
        recipe, tmp_path / "unet", 0, False,
    )  # fmt: skip
    assert _falls(_losses(tmp_path, "unet"), k=8)
    ema = torch.load(tmp_path / "unet" / "done.pt", weights_only=False)["state"]["ema"]
    after = pipe.unet.state_dict()
    assert all(torch.equal(after[k], ema["shadow"][f"unet.{k}"]) for k in after)
    assert not all(torch.equal(after[k], before[k]) for k in after)


_RUN_VAE = """
import sys, torch
torch.set_num_threads(1)
from edgediff.models.presets import build_random_pipeline
from edgediff.models.training.recipes import VaeRecipe
from edgediff.models.training.vae import train_vae
pipe = build_random_pipeline("shapes")
recipe = VaeRecipe(steps=int(sys.argv[2]), batch_size=4, crop=16, checkpoint_every=3)
train_vae(pipe.vae, recipe, __import__("pathlib").Path(sys.argv[1]), 0, False)
"""


def test_killed_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    steps = 60
    # Reference: one uninterrupted run.
    subprocess.run([sys.executable, "-c", _RUN_VAE, str(tmp_path / "ref"), str(steps)], check=True)
    # The same run, killed once its first checkpoint is on disk, then run again.
    work = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _RUN_VAE, str(work), str(steps)])
    deadline = time.monotonic() + 120
    while not (work / "state.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed_from = torch.load(work / "state.pt", weights_only=False)["step"]
    assert 0 < resumed_from < steps
    out = subprocess.run(
        [sys.executable, "-c", _RUN_VAE, str(work), str(steps)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert f"resuming at step {resumed_from}" in out.stdout
    ref = torch.load(tmp_path / "ref" / "done.pt", weights_only=False)
    got = torch.load(work / "done.pt", weights_only=False)
    assert got["losses"] == ref["losses"]
    for k, v in ref["state"]["vae"].items():
        assert torch.equal(v, got["state"]["vae"][k]), k


def test_train_command_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from edgediff.cli import cli

    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path), "--preset", "nope"])
    assert result.exit_code != 0
    assert "unknown training preset 'nope'" in result.output and "shapes-64" in result.output
    result = CliRunner().invoke(cli, ["train", "unet", "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "needs the 'vae' stage" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(
        cli, ["train", "vae", "--out", str(tmp_path / "run"), "--seed", "3"]
    )
    assert "holds a run with" in result.output  # another seed must not resume this run


def test_recipe_writes_a_checkpoint_diffusers_loads(tmp_path):
    from diffusers import StableDiffusionPipeline

    from edgediff.models.training.recipes import Recipe
    from edgediff.models.training.train import train

    micro = Recipe(
        name="micro",
        description="test",
        preset="shapes",
        vae=VaeRecipe(steps=2, batch_size=4),
        clip=ClipRecipe(steps=2, batch_size=8),
        unet=UnetRecipe(steps=2, batch_size=4, warmup=1),
    )
    checkpoint = train(tmp_path / "run", micro, seed=1, progress=False)
    assert checkpoint == tmp_path / "run" / "checkpoint"
    pipe = StableDiffusionPipeline.from_pretrained(checkpoint)
    assert pipe.vae.config.scaling_factor != 1.0  # measured, not the preset's placeholder
    assert pipe.tokenizer.model_max_length == 16
    images = pipe("a big red circle on the left", num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 64, 64, 3)
