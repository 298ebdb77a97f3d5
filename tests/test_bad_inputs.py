"""Each bad input gets a one-line message naming the problem and the fix, and loses nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgediff.cli import cli
from edgediff.errors import BundleError, InputError
from edgediff.runtime import Bundle, Pipeline


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _generate(bundle: Path, out: Path, *args: str):
    """Run `edgediff generate` in-process as a user would; return the click result."""
    argv = [
        "generate",
        "a red circle",
        "--bundle",
        str(bundle),
        "--out",
        str(out),
        "--steps",
        "1",
        "--seed",
        "0",
        *args,
    ]
    return CliRunner().invoke(cli, argv)


def _assert_clean_failure(result, *fragments: str) -> None:
    assert result.exit_code != 0
    # A ClickException, not a crash: click reports it as "Error: ..." with no traceback.
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: ")
    for fragment in fragments:
        assert fragment in message, message


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


def test_changed_byte_is_refused_naming_the_file(bundle_copy, tmp_path):
    _damage(bundle_copy / "unet" / "model.onnx", "flip")
    before = _listing(bundle_copy)
    out = tmp_path / "image.png"
    result = _generate(bundle_copy, out)
    _assert_clean_failure(result, "unet/model.onnx", "sha256", "edgediff export")
    assert not out.exists()
    assert _listing(bundle_copy) == before
    with pytest.raises(BundleError, match=r"unet/model\.onnx"):
        Bundle.open(bundle_copy).verify()


def test_truncated_model_is_refused(bundle_copy, tmp_path):
    _damage(bundle_copy / "vae_decoder" / "model.onnx", "truncate")
    result = _generate(bundle_copy, tmp_path / "image.png")
    _assert_clean_failure(result, "vae_decoder/model.onnx", "truncated")
    assert not (tmp_path / "image.png").exists()


def test_missing_component_folder(bundle_copy, tmp_path):
    shutil.rmtree(bundle_copy / "text_encoder")
    result = _generate(bundle_copy, tmp_path / "image.png")
    _assert_clean_failure(result, "folder 'text_encoder/' is missing", "edgediff export")


def test_manifest_that_is_not_json(bundle_copy, tmp_path):
    (bundle_copy / "manifest.json").write_text("{ not json")
    result = _generate(bundle_copy, tmp_path / "image.png")
    _assert_clean_failure(result, "manifest.json", "not valid JSON", "edgediff export")


@pytest.mark.parametrize("escape", ["../outside.bin", "/etc/passwd", "tokenizer/../../outside.bin"])
def test_manifest_path_leaving_the_bundle_is_refused_even_if_unused(bundle_copy, tmp_path, escape):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    # An extra file nothing loads: refused all the same, before anything is read.
    manifest["tokenizer"]["original_files"].append(escape)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    result = _generate(bundle_copy, tmp_path / "image.png")
    _assert_clean_failure(result, escape, "leaves the bundle")


def test_symlink_leaving_the_bundle_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle_copy / "unet" / "model.onnx", outside)
    (bundle_copy / "unet" / "model.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.open(bundle_copy)


def test_bundle_folder_that_does_not_exist(tmp_path):
    result = _generate(tmp_path / "nope", tmp_path / "image.png")
    _assert_clean_failure(result, "does not exist", "edgediff export")


def test_folder_without_manifest(tmp_path):
    result = CliRunner().invoke(cli, ["info", str(tmp_path)])
    _assert_clean_failure(result, "no manifest.json", "edgediff export")


# 36 is a multiple of the VAE factor but gives 9 latent rows, which the U-Net cannot halve.
@pytest.mark.parametrize(
    ("flag", "value"), [("--height", "30"), ("--width", "66"), ("--height", "36")]
)
def test_size_not_a_multiple_of_the_model_factors(tiny_bundle, tmp_path, flag, value):
    result = _generate(tiny_bundle, tmp_path / "image.png", flag, value)
    expected = "multiple of 8 (VAE factor 4 × U-Net factor 2)"
    _assert_clean_failure(result, f"{flag[2:]} {value}", expected, "Use e.g.")
    assert not (tmp_path / "image.png").exists()


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_steps_below_one(tiny_bundle, tmp_path, steps):
    result = CliRunner().invoke(
        cli,
        [
            "generate",
            "x",
            "--bundle",
            str(tiny_bundle),
            "--out",
            str(tmp_path / "i.png"),
            "--steps",
            steps,
        ],
    )
    _assert_clean_failure(result, "num_inference_steps", "in [1, 1000]")


def test_existing_output_is_not_overwritten(tiny_bundle, tmp_path):
    out = tmp_path / "image.png"
    out.write_bytes(b"precious")
    result = _generate(tiny_bundle, out)
    _assert_clean_failure(result, "already exists", "--force")
    assert out.read_bytes() == b"precious"


def test_long_prompt_is_truncated_with_a_warning(tiny_bundle, caplog):
    pipe = Pipeline.load(tiny_bundle)
    long_prompt = "a big red circle on the left " * 30
    with caplog.at_level("WARNING", logger="edgediff"):
        images = pipe(long_prompt, num_inference_steps=1, seed=0, output_type="np")
    assert images.shape[0] == 1
    assert any("cut off" in r.getMessage() for r in caplog.records)
    # The head of the prompt is kept: same embedding input as the prompt cut by hand.
    ids = pipe.tokenizer([long_prompt])
    assert ids.shape == (1, pipe.tokenizer.max_length)


def test_pipeline_errors_are_typed(tiny_bundle):
    pipe = Pipeline.load(tiny_bundle)
    with pytest.raises(InputError, match="negative prompts"):
        pipe(["a", "b", "c"], negative_prompt=["x", "y"], num_inference_steps=1)
    with pytest.raises(InputError, match="latents"):
        pipe("a", latents=pipe.initial_latents(2, 64, 64, __import__("numpy").random.default_rng()))


def test_cli_failure_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgediff.cli", "generate", "x", "--bundle", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if line.startswith("Error: ")
    ]
