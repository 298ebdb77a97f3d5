"""The runtime's images equal diffusers' StableDiffusionPipeline (DDIM) from the same latents."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgediff.tolerances import PIPELINE_IMAGE_ATOL

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from edgediff.runtime import Pipeline  # noqa: E402

# (preset, height, width): the default size and a second, non-square one per architecture.
SIZES = {"tiny": [(64, 64), (32, 48)], "tiny-v": [(64, 64), (96, 64)]}
CASES = [
    # prompts, negative prompt, guidance, images per prompt
    pytest.param(["a red circle on the left"], None, 5.0, 1, id="cfg"),
    pytest.param(["a red circle on the left"], None, 1.0, 1, id="no-cfg"),
    pytest.param(["a big blue square", "green star, top"], None, 4.0, 2, id="batch"),
    pytest.param(["a yellow triangle"], "a blue circle", 7.5, 1, id="negative"),
]


@pytest.fixture(scope="module")
def pipelines(checkpoints, bundles):
    """(diffusers pipeline, edgediff pipeline) per preset."""
    out = {}
    for name in SIZES:
        reference = diffusers.StableDiffusionPipeline.from_pretrained(checkpoints[name])
        reference.set_progress_bar_config(disable=True)
        out[name] = (reference, Pipeline.load(bundles[name]))
    return out


@pytest.mark.parametrize("preset", list(SIZES))
@pytest.mark.parametrize("size_index", [0, 1], ids=["default-size", "other-size"])
@pytest.mark.parametrize(("prompts", "negative", "guidance", "per_prompt"), CASES)
def test_images_equal_diffusers(
    pipelines, preset, size_index, prompts, negative, guidance, per_prompt
):
    reference, pipe = pipelines[preset]
    height, width = SIZES[preset][size_index]
    f = pipe.config.vae_scale_factor
    shape = (len(prompts) * per_prompt, pipe.config.latent_channels, height // f, width // f)
    latents = np.random.default_rng(7).standard_normal(shape, dtype=np.float32)
    kwargs = dict(
        negative_prompt=None if negative is None else [negative] * len(prompts),
        num_inference_steps=4,
        guidance_scale=guidance,
        height=height,
        width=width,
        num_images_per_prompt=per_prompt,
        output_type="np",
    )
    with torch.no_grad():
        expected = reference(prompts, latents=torch.from_numpy(latents), **kwargs).images
    actual = pipe(prompts, latents=latents, **kwargs)

    assert actual.shape == expected.shape == (shape[0], height, width, 3)
    assert actual.dtype == np.float32
    assert np.abs(actual - expected).max() <= PIPELINE_IMAGE_ATOL
    # Not a vacuous match: the images carry structure and differ between seeds.
    assert actual.std() > 1e-3


def test_seeded_generation_is_reproducible(pipelines):
    _, pipe = pipelines["tiny"]
    a = pipe("a red circle", seed=3, num_inference_steps=2, output_type="np")
    b = pipe("a red circle", seed=3, num_inference_steps=2, output_type="np")
    c = pipe("a red circle", seed=4, num_inference_steps=2, output_type="np")
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize(("guidance", "expected_batch"), [(1.0, 2), (0.5, 2), (1.5, 4)])
def test_unet_batch_doubles_only_when_guided(pipelines, guidance, expected_batch):
    _, pipe = pipelines["tiny"]
    batches: list[int] = []
    unet = pipe.models.unet

    def noting_batch(**feeds):
        batches.append(feeds["sample"].shape[0])
        return unet(**feeds)

    models = dataclasses.replace(pipe.models, unet=noting_batch)
    pipe(
        ["a", "b"],
        seed=0,
        num_inference_steps=3,
        guidance_scale=guidance,
        output_type="latent",
        models=models,
    )
    assert batches == [expected_batch] * 3


def test_eta_one_uses_seeded_noise(pipelines):
    _, pipe = pipelines["tiny"]
    a = pipe("a red circle", seed=1, num_inference_steps=3, eta=1.0, output_type="latent")
    b = pipe("a red circle", seed=1, num_inference_steps=3, eta=1.0, output_type="latent")
    c = pipe("a red circle", seed=1, num_inference_steps=3, eta=0.0, output_type="latent")
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
