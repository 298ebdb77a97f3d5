"""Image-to-image and inpainting equal diffusers' pipelines (DDIM) given the same noise.

edgediff encodes an image to the mean of the VAE's posterior where diffusers samples it with
its generator; the reference here is made to take the mean too, so the only randomness left is
the added noise, which both are given.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgediff.errors import InputError
from edgediff.tolerances import PIPELINE_IMAGE_ATOL

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution  # noqa: E402
from PIL import Image  # noqa: E402

from edgediff.runtime import Pipeline  # noqa: E402

# diffusers asks for one image per generated image; one for all is what is being tested.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You have passed .* initial images:FutureWarning"),
    pytest.mark.filterwarnings("ignore:the bundle .* was written without checking:UserWarning"),
]

PROMPTS = ["a big blue circle on the left", "a small red square"]


def source_image(height: int, width: int) -> Image.Image:
    """A structured RGB picture: gradients and a disc."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    disc = ((y - 0.4) ** 2 + (x - 0.3) ** 2 < 0.05).astype(float)
    rgb = np.stack([x, y, disc], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def half_mask(height: int, width: int) -> Image.Image:
    mask = np.zeros((height, width), np.uint8)
    mask[:, width // 2 :] = 255
    return Image.fromarray(mask)


@pytest.fixture(scope="module")
def loaded(checkpoints, bundles):
    """(diffusers img2img, diffusers inpaint, edgediff pipeline) of the tiny checkpoint."""
    img2img = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(checkpoints["tiny"])
    inpaint = diffusers.StableDiffusionInpaintPipeline.from_pretrained(checkpoints["tiny"])
    for reference in (img2img, inpaint):
        reference.scheduler = diffusers.DDIMScheduler.from_config(reference.scheduler.config)
        reference.set_progress_bar_config(disable=True)
    with Pipeline.load(bundles["tiny"]) as pipe:
        yield img2img, inpaint, pipe


@pytest.fixture
def posterior_mean(monkeypatch):
    """diffusers' VAE encodings take the posterior's mean, as edgediff's do."""
    monkeypatch.setattr(
        DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean
    )


def noise_of(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The noise diffusers draws first from torch.Generator().manual_seed(seed)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()


CASES = [
    pytest.param(0.5, 5.0, id="strength-0.5-cfg"),
    pytest.param(0.8, 1.0, id="strength-0.8-no-cfg"),
    pytest.param(1.0, 4.0, id="strength-1-cfg"),
]


@pytest.mark.parametrize(("strength", "guidance"), CASES)
def test_img2img_equals_diffusers(loaded, posterior_mean, strength, guidance):
    img2img, _, pipe = loaded
    image = source_image(64, 48)
    kwargs = dict(num_inference_steps=4, guidance_scale=guidance, num_images_per_prompt=2)
    with torch.no_grad():
        expected = img2img(
            PROMPTS, image=image, strength=strength, output_type="np",
            generator=torch.Generator().manual_seed(5), **kwargs,
        ).images  # fmt: skip
    noise = noise_of(5, (4, 4, 64 // 4, 48 // 4))
    actual = pipe(
        PROMPTS, image=image, strength=strength, latents=noise, output_type="np", **kwargs
    )
    assert actual.shape == expected.shape == (4, 64, 48, 3)
    assert np.abs(actual - expected).max() <= PIPELINE_IMAGE_ATOL
    assert actual.std() > 1e-3


def inpainted_both_ways(reference, pipe, strength: float, guidance: float, **extra):
    """(edgediff's images, diffusers' images) of the right half of source_image repainted,
    from the same noise; `extra` goes to edgediff's call."""
    image, mask = source_image(64, 64), half_mask(64, 64)
    kwargs = dict(
        num_inference_steps=4, guidance_scale=guidance, num_images_per_prompt=2,
        height=64, width=64, strength=strength,
    )  # fmt: skip
    with torch.no_grad():
        expected = reference(
            PROMPTS, image=image, mask_image=mask, output_type="np",
            generator=torch.Generator().manual_seed(9), **kwargs,
        ).images  # fmt: skip
    noise = noise_of(9, (4, 4, 16, 16))
    actual = pipe(PROMPTS, image=image, mask_image=mask, latents=noise, **{**kwargs, **extra})
    return actual, expected


@pytest.mark.parametrize(("strength", "guidance"), CASES)
def test_inpainting_by_blending_equals_diffusers(loaded, posterior_mean, strength, guidance):
    _, inpaint, pipe = loaded
    actual, expected = inpainted_both_ways(inpaint, pipe, strength, guidance, output_type="np")
    assert np.abs(actual - expected).max() <= PIPELINE_IMAGE_ATOL
    # In latent space the kept half ends as the image's own latents in every image; the
    # masked half was repainted, differently per prompt and noise.
    latents, _ = inpainted_both_ways(inpaint, pipe, strength, guidance, output_type="latent")
    kept, repainted = latents[..., :8], latents[..., 8:]
    assert np.array_equal(kept, np.broadcast_to(kept[:1], kept.shape))
    assert np.abs(repainted - repainted[:1]).max() > 0.1


def test_seeded_editing_is_reproducible_and_keeps_its_size(loaded):
    _, _, pipe = loaded
    image = source_image(32, 48)
    a = pipe("a red circle", image=image, seed=3, num_inference_steps=4, output_type="np")
    b = pipe("a red circle", image=image, seed=3, num_inference_steps=4, output_type="np")
    assert a.shape == (1, 32, 48, 3) and np.array_equal(a, b)
    resized = pipe("a red circle", image=image, height=64, width=64, seed=3, output_type="np")
    assert resized.shape == (1, 64, 64, 3)


BAD = [
    (dict(image=source_image(64, 64), strength=1.5), "strength"),
    (dict(image=source_image(64, 64), strength=float("nan")), "strength"),
    (dict(image=source_image(64, 64), strength=0.1), "no step to run"),
    (dict(image=source_image(60, 64)), "not a multiple of"),
    (dict(image=source_image(64, 64), mask_image=half_mask(32, 32)), "mask_image is 32x32"),
    (dict(mask_image=half_mask(64, 64)), "needs the image"),
    (dict(image="picture.png"), "PIL image or a numpy array"),
    (dict(image=np.full((64, 64, 3), 2.0)), "in [0, 1]"),
    (dict(strength=0.5), "strength applies to image-to-image"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_editing_inputs_get_one_line_errors(loaded, kwargs, message):
    _, _, pipe = loaded
    with pytest.raises(InputError) as error:
        pipe("a red circle", num_inference_steps=4, **kwargs)
    assert message in str(error.value) and len(str(error.value).splitlines()) == 1


def test_generate_edits_an_image_file_and_records_its_hash(tmp_path):
    from click.testing import CliRunner

    from edgediff.bundle.files import sha256_file
    from edgediff.cli import cli
    from edgediff.runtime.images import read_png_parameters

    source, mask = tmp_path / "source.png", tmp_path / "mask.png"
    source_image(64, 64).save(source)
    half_mask(64, 64).save(mask)
    out = tmp_path / "edited.png"
    args = ["generate", "a big red circle on the right", "--seed", "1", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--image", str(source), "--mask", str(mask)])
    assert result.exit_code == 0, result.output
    record = read_png_parameters(out)
    assert record["image_sha256"] == sha256_file(source)
    assert record["mask_sha256"] == sha256_file(mask) and record["strength"] == 1.0

    (tmp_path / "notes.png").write_text("not a picture")
    for extra, message in (
        (["--image", str(tmp_path / "notes.png")], "is not an image Pillow can read"),
        (["--mask", str(mask)], "--mask needs the --image"),
        (["--image", str(source), "--strength", "2"], "strength must be"),
        (["--strength", "0.5"], "--strength applies to --image"),
    ):
        result = CliRunner().invoke(cli, [*args, "--force", *extra])
        assert result.exit_code == 1 and message in result.output, result.output


@pytest.fixture(scope="module")
def inpainting(checkpoints, tmp_path_factory):
    """(diffusers inpaint pipeline, edgediff pipeline) of a random 9-channel inpainting U-Net
    beside the tiny checkpoint's text encoder and VAE."""
    import shutil

    from edgediff.export import export_checkpoint

    root = tmp_path_factory.mktemp("inpainting")
    checkpoint = root / "checkpoint"
    shutil.copytree(checkpoints["tiny"], checkpoint)
    config = diffusers.UNet2DConditionModel.load_config(checkpoint / "unet")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_config({**config, "in_channels": 9})
    shutil.rmtree(checkpoint / "unet")
    unet.save_pretrained(checkpoint / "unet")
    # Unverified: the images are compared with diffusers' below, a stricter check.
    export_checkpoint(checkpoint, root / "bundle", progress=False, verify=False)
    reference = diffusers.StableDiffusionInpaintPipeline.from_pretrained(checkpoint)
    reference.scheduler = diffusers.DDIMScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    with Pipeline.load(root / "bundle") as pipe:
        yield reference, pipe


@pytest.mark.parametrize(("strength", "guidance"), CASES)
def test_nine_channel_inpainting_equals_diffusers(inpainting, posterior_mean, strength, guidance):
    reference, pipe = inpainting
    assert pipe.config.inpainting and pipe.config.unet_in_channels == 9
    actual, expected = inpainted_both_ways(reference, pipe, strength, guidance, output_type="np")
    assert np.abs(actual - expected).max() <= PIPELINE_IMAGE_ATOL
    assert actual.std() > 1e-3


def test_an_inpainting_unet_needs_a_masked_image(inpainting):
    _, pipe = inpainting
    for kwargs in ({}, {"image": source_image(64, 64)}):
        with pytest.raises(InputError, match="inpainting model"):
            pipe("a red circle", **kwargs)
