"""The `edgediff` command as a user runs it: generate, info, random-checkpoint."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from edgediff.cli import cli
from edgediff.runtime import Pipeline
from edgediff.runtime.images import read_png_parameters


def test_generate_writes_pngs_with_their_parameters(tiny_bundle, tmp_path):
    out = tmp_path / "cat.png"
    args = [
        "generate",
        "a red circle",
        "--bundle",
        str(tiny_bundle),
        "--out",
        str(out),
        "--steps",
        "2",
        "--seed",
        "5",
        "-n",
        "2",
        "--height",
        "32",
        "--width",
        "48",
        "--negative",
        "blue",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    paths = [tmp_path / "cat-0.png", tmp_path / "cat-1.png"]
    assert all(p.exists() for p in paths)
    params = read_png_parameters(paths[1])
    assert params["prompt"] == "a red circle"
    assert params["seed"] == 5 and params["steps"] == 2 and params["index"] == 1
    assert params["negative_prompt"] == "blue"
    with Image.open(paths[0]) as image:
        assert image.size == (48, 32)
        pixels = np.asarray(image)
    # The same request through the Python API gives the same pixels.
    expected = Pipeline.load(tiny_bundle)(
        "a red circle",
        negative_prompt="blue",
        num_inference_steps=2,
        seed=5,
        height=32,
        width=48,
        num_images_per_prompt=2,
        output_type="pil",
    )
    assert np.array_equal(pixels, np.asarray(expected[0]))
    # Nothing else was written beside the images (no temporary files left).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat-0.png", "cat-1.png"]


def test_info_prints_the_manifest_and_checks_hashes(tiny_bundle):
    result = CliRunner().invoke(cli, ["info", str(tiny_bundle)])
    assert result.exit_code == 0, result.output
    for fragment in (
        "text_encoder",
        "unet",
        "vae_decoder",
        "vae_encoder",
        "out_sample",
        "epsilon",
        "files match their sha256",
        "ok abs",
    ):
        assert fragment in result.output


def test_help_explains_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("export", "generate", "info", "random-checkpoint", "train", "eval"):
        assert command in result.output
