"""Shared fixtures: random-weight checkpoints and their exported bundles, built once per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

TEST_PRESETS = ("tiny", "tiny-v")

_USER_CACHE_DIR = os.environ.get("EDGEDIFF_CACHE_DIR")
_RUN_CACHE_DIR = tempfile.mkdtemp(prefix="edgediff-test-cache-")


def pytest_configure(config) -> None:
    """Each test run verifies bundles through its own, empty cache of verified files (subprocesses
    inherit it): it never reads or writes the user's, and no earlier run vouches for a file."""
    os.environ["EDGEDIFF_CACHE_DIR"] = _RUN_CACHE_DIR


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_RUN_CACHE_DIR, ignore_errors=True)
    if _USER_CACHE_DIR is None:
        os.environ.pop("EDGEDIFF_CACHE_DIR", None)
    else:
        os.environ["EDGEDIFF_CACHE_DIR"] = _USER_CACHE_DIR


try:
    from hypothesis import settings

    # CI sees the same examples on every run (a red CI is then a regression, not luck);
    # elsewhere each run explores new ones.
    settings.register_profile("ci", derandomize=True)
    settings.load_profile("ci" if os.environ.get("CI") else "default")
except ImportError:  # hypothesis comes with [dev]
    pass


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test: bitwise-equal resumption needs the same thread count
    in every process."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Random-weight diffusers checkpoints, one per test architecture."""
    pytest.importorskip("torch", reason="building checkpoints needs the [train] extra")
    from edgediff.models.presets import save_random_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {p: save_random_checkpoint(p, root / p, seed=0) for p in TEST_PRESETS}


@pytest.fixture(scope="session")
def bundles(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Each test checkpoint exported (fp32, verified) to a bundle."""
    from edgediff.export import export_checkpoint

    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, ckpt in checkpoints.items():
        export_checkpoint(ckpt, root / name, progress=False)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def tiny_bundle(bundles) -> Path:
    """The exported 'tiny' bundle (read-only: copy it before changing a byte)."""
    return bundles["tiny"]


@pytest.fixture(scope="session")
def quantized(tmp_path_factory):
    """A copy of the shipped bundle, calibrated (8 prompts, its recommended steps and
    guidance), INT8 and FP8 of its default U-Net (read-only: copy it before changing a byte)."""
    pytest.importorskip("onnx", reason="quantising needs the [quant] extra")
    from edgediff.bundle.reader import Bundle
    from edgediff.calibration.capture import calibrate
    from edgediff.calibration.prompts import read_prompts
    from edgediff.calibration.quantize_bundle import quantize_bundle
    from edgediff.runtime.pipeline import DEFAULT_BUNDLE

    root = tmp_path_factory.mktemp("quantized") / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, root)
    calibrate(root, read_prompts(), samples=8, batch_size=4, force=True)
    quantize_bundle(root, "int8", ["unet"], keep="none", probe_prompts=4, force=True)
    quantize_bundle(root, "fp8", ["unet"], keep="none", probe_prompts=4, force=True)
    return Bundle.open(root)


@pytest.fixture(scope="session")
def distilled(checkpoints, tmp_path_factory) -> dict[int, Path]:
    """The tiny checkpoint distilled with the quick preset, steps (2, 1): the guidance student
    at 2 steps, one progressive round to 1, and a tiny decoder; step count -> checkpoint."""
    torch = pytest.importorskip("torch", reason="distillation needs the [train] extra")
    from edgediff.models.distill.run import distill

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and, for models this small, fastest
    try:
        out = tmp_path_factory.mktemp("distilled")
        return distill(
            checkpoints["tiny"], out, pool_guidance=3.0, recipe="quick", steps=(2, 1),
            progress=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def student_bundle(checkpoints, distilled, tmp_path_factory) -> Path:
    """`distilled` exported as one bundle through the CLI, the teacher kept as the U-Net of
    the other step counts, 1 step and guidance 5 recommended (read-only: copy it before
    changing a byte)."""
    from click.testing import CliRunner

    from edgediff.cli import cli

    root = tmp_path_factory.mktemp("student") / "bundle"
    run, teacher = next(iter(distilled.values())).parent, checkpoints["tiny"]
    args = ["--recommended-steps", "1", "--recommended-guidance", "5", "--teacher", str(teacher)]
    result = CliRunner().invoke(cli, ["export", str(run), str(root), *args])
    assert result.exit_code == 0, result.output
    return root
