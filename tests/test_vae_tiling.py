"""Tiled VAE decoding and encoding (runtime.vae_tiling): the tiling and blending exactly, then
the shipped bundle's real VAE tiled against untiled."""

from __future__ import annotations

import time
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgediff.errors import InputError
from edgediff.metrics.quality import psnr
from edgediff.runtime import Bundle, Pipeline
from edgediff.runtime.backends.onnxruntime import OrtBackend
from edgediff.runtime.images import to_images
from edgediff.runtime.pipeline import DEFAULT_BUNDLE
from edgediff.runtime.vae_tiling import (
    DEFAULT_OVERLAP,
    DEFAULT_PASSES,
    DEFAULT_TILE,
    axis_weights,
    decode_tiled,
    decode_tiled_synced,
    encode_tiled,
    encode_tiled_synced,
    tile_starts,
)

MODEL = Bundle.open(DEFAULT_BUNDLE).manifest.model
FACTOR = MODEL.vae_scale_factor
# 384 px: 96 latent px, 2×2 default tiles sharing 32 px.
SIZE = (DEFAULT_TILE + 32) * FACTOR
PROMPT = "a big red circle on the left"

# Measured at SIZE (cosine ramp, default tile and overlap): full VAE decoder 23.6 dB, tiny
# decoder 72 dB, encoder's posterior mean 27 % off. The full VAE's GroupNorm normalises each
# tile with its own statistics (vae_tiling's docstring), which the blending cannot undo; its
# bounds are measured floors that catch a regression in placement or weights, not 40 dB.
FULL_DECODER_MIN_PSNR_DB = 22.0
TINY_DECODER_MIN_PSNR_DB = 40.0
ENCODER_MAX_RELATIVE_ERROR = 0.32
# Sharing the whole image's GroupNorm statistics (the synced functions, DEFAULT_PASSES passes)
# the full decoder measured 49.2 dB at SIZE and the encoder's posterior mean 1.4 % off.
SYNCED_DECODER_MIN_PSNR_DB = 40.0
SYNCED_ENCODER_MAX_RELATIVE_ERROR = 0.03


# ---------------------------------------------------------------- tiling, exactly


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 400), st.integers(1, 96), st.data())
def test_tiles_cover_the_axis_overlap_and_end_flush(length, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] + tile == length
    shared = [a + tile - b for a, b in pairwise(starts)]
    assert min(shared) >= overlap
    assert len(starts) == -(-(length - overlap) // (tile - overlap))  # no more than needed


def test_tile_starts_examples():
    assert tile_starts(128, 64, 8) == [0, 32, 64]
    assert tile_starts(72, 32, 8) == [0, 20, 40]
    assert tile_starts(40, 64, 8) == [0]
    assert tile_starts(64, 64, 0) == [0]


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0), (-3, 0), (8, -1), (8, 8), (8, 9)])
def test_bad_tiling_is_refused_in_one_line_with_a_fix(tile, overlap):
    for call in (
        lambda: tile_starts(100, tile, overlap),
        lambda: decode_tiled(_nearest, np.zeros((1, 4, 20, 20), np.float32), 4, tile, overlap),
    ):
        with pytest.raises(InputError) as caught:
            call()
        assert caught.value.fix and "\n" not in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 64), st.integers(1, 8), st.data())
def test_blend_weights_are_a_partition_of_unity_with_full_weight_at_the_border(
    length, tile, scale, data
):
    overlap = data.draw(st.integers(0, tile - 1))
    starts = tile_starts(length, tile, overlap)
    weights = axis_weights(starts, tile, length, scale)
    total = np.zeros(length * scale)
    for start, w in zip(starts, weights, strict=True):
        assert len(w) == (min(start + tile, length) - start) * scale and (w > 0).all()
        total[start * scale : start * scale + len(w)] += w
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)
    assert weights[0][0] == 1.0 and weights[-1][-1] == 1.0


def _nearest(latents: np.ndarray) -> np.ndarray:
    """A decoder exact under tiling: nearest-neighbour upsampling of 3 channels."""
    return latents[:, :3].repeat(FACTOR, axis=2).repeat(FACTOR, axis=3)


def _pool(images: np.ndarray) -> np.ndarray:
    """An encoder exact under tiling: mean over each factor×factor cell, channels doubled."""
    n, c, h, w = images.shape
    cells = images.reshape(n, c, h // FACTOR, FACTOR, w // FACTOR, FACTOR).mean(axis=(3, 5))
    return np.concatenate([cells, -cells], axis=1)


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"),
    [(40, 72, 16, 4), (40, 72, 32, 8), (96, 96, 64, 8), (17, 131, 64, 8)],
)
def test_an_exact_model_comes_back_exactly_from_tiles(h, w, tile, overlap):
    latents = np.random.default_rng(h * w).standard_normal((2, 4, h, w), dtype=np.float32)
    decoded = decode_tiled(_nearest, latents, FACTOR, tile, overlap)
    np.testing.assert_allclose(decoded, _nearest(latents), rtol=0, atol=1e-5)
    encoded = encode_tiled(_pool, decoded, FACTOR, tile, overlap)
    assert encoded.shape == (2, 6, h, w)
    np.testing.assert_allclose(encoded, _pool(decoded), rtol=0, atol=1e-5)


def test_wrong_factor_or_image_size_is_refused():
    latents = np.zeros((1, 4, 80, 80), np.float32)
    with pytest.raises(InputError, match="vae_scale_factor"):
        decode_tiled(_nearest, latents, FACTOR + 1)
    with pytest.raises(InputError, match="multiples"):
        encode_tiled(_pool, np.zeros((1, 3, 81, 80), np.float32), FACTOR)
    with pytest.raises(InputError, match="N×C×H×W"):
        decode_tiled(_nearest, latents[0], FACTOR)


# ---------------------------------------------------------------- the shipped VAE


@pytest.fixture(scope="module")
def models() -> dict:
    """The shipped bundle's VAE decoders and encoder as numpy functions, 2 threads."""
    backend = OrtBackend("ort-cpu", threads=2)
    decoder = backend.load(DEFAULT_BUNDLE / "vae_decoder/model.onnx")
    tiny = backend.load(DEFAULT_BUNDLE / "vae_decoder.tiny/model.onnx")
    encoder = backend.load(DEFAULT_BUNDLE / "vae_encoder/model.onnx")
    return {
        "decoder": lambda z: decoder.run({"latent_sample": z})["sample"],
        "tiny": lambda z: tiny.run({"latent_sample": z})["sample"],
        "encoder": lambda x: encoder.run({"sample": x})["latent_parameters"],
    }


@pytest.fixture(scope="module")
def synced() -> dict:
    """The shipped VAE's sessions whose GroupNorms take and report statistics, 2 threads."""
    backend = OrtBackend("ort-cpu", threads=2)
    return {
        name: backend.load_vae_for_tiles(
            DEFAULT_BUNDLE / f"{name}/model.onnx", split=False
        ).tiled.run
        for name in ("vae_decoder", "vae_encoder")
    }


@pytest.fixture(scope="module")
def latents() -> np.ndarray:
    """Unscaled latents of a real generation, bigger than one tile."""
    with Pipeline.load(backend_options={"threads": 2}) as pipe:
        scaled = pipe(PROMPT, seed=0, height=SIZE, width=SIZE, output_type="latent")
    assert scaled.shape[2] > DEFAULT_TILE
    return scaled / np.float32(MODEL.scaling_factor)


def _decode_psnr(decode, latents: np.ndarray, **tiling) -> float:
    tiled = decode_tiled(decode, latents, FACTOR, **tiling)
    return psnr(to_images(tiled), to_images(decode(latents)), peak=1.0)


def test_one_tile_is_the_untiled_decode(models, latents):
    small = latents[:, :, :DEFAULT_TILE, :DEFAULT_TILE]
    np.testing.assert_array_equal(
        decode_tiled(models["decoder"], small, FACTOR), models["decoder"](small)
    )


def test_real_decoders_tiled_against_untiled(models, latents):
    full = _decode_psnr(models["decoder"], latents)
    tiny = _decode_psnr(models["tiny"], latents)
    print(
        f"\n{SIZE}×{SIZE}, tile {DEFAULT_TILE}, overlap {DEFAULT_OVERLAP}: "
        f"full VAE decoder {full:.2f} dB, tiny decoder {tiny:.2f} dB"
    )
    assert full >= FULL_DECODER_MIN_PSNR_DB, full
    # No normalisation layers: only the tile edges' zero padding differs, which ramps hide.
    assert tiny >= TINY_DECODER_MIN_PSNR_DB, tiny


def test_real_decoder_on_latents_not_divisible_into_equal_tiles(models, latents):
    odd = latents[:, :, :40, :72]
    tiled = decode_tiled(models["tiny"], odd, FACTOR, tile=32, overlap=DEFAULT_OVERLAP)
    assert tiled.shape == (1, 3, 40 * FACTOR, 72 * FACTOR)
    quality = psnr(to_images(tiled), to_images(models["tiny"](odd)), peak=1.0)
    print(f"\n40×72 latents, tile 32: tiny decoder {quality:.2f} dB")
    assert quality >= TINY_DECODER_MIN_PSNR_DB, quality
    full = decode_tiled(models["decoder"], odd, FACTOR, tile=32, overlap=DEFAULT_OVERLAP)
    assert full.shape == tiled.shape and np.isfinite(full).all()


def _posterior_mean_error(tiled: np.ndarray, untiled: np.ndarray) -> tuple[float, float]:
    """The tiled encoder's posterior mean against the untiled one's: relative L2 error, and
    PSNR against its range."""
    mean, reference = tiled[:, : MODEL.latent_channels], untiled[:, : MODEL.latent_channels]
    error = float(np.linalg.norm(mean - reference) / np.linalg.norm(reference))
    return error, psnr(mean, reference)


def test_real_encoder_tiled_against_untiled(models, latents):
    images = np.clip(models["decoder"](latents), -1.0, 1.0)
    tiled = encode_tiled(models["encoder"], images, FACTOR)
    untiled = models["encoder"](images)
    assert tiled.shape == untiled.shape == (1, 2 * MODEL.latent_channels, *latents.shape[2:])
    error, db = _posterior_mean_error(tiled, untiled)
    print(
        f"\n{SIZE}×{SIZE} image: posterior mean {error:.1%} off (relative L2), "
        f"{db:.2f} dB against its range"
    )
    assert error <= ENCODER_MAX_RELATIVE_ERROR, error


# ---------------------------------------------------------------- shared GroupNorm statistics


class _Counted:
    """A run callable that counts its calls (passes = calls / tiles)."""

    def __init__(self, run):
        self.run, self.calls = run, 0

    def __call__(self, feeds: dict) -> dict:
        self.calls += 1
        return self.run(feeds)


def test_synced_decoder_against_untiled(models, synced, latents):
    reference = to_images(models["decoder"](latents))
    plain = psnr(to_images(decode_tiled(models["decoder"], latents, FACTOR)), reference, 1.0)
    run = _Counted(synced["vae_decoder"])
    start = time.perf_counter()
    decoded = decode_tiled_synced(run, latents, FACTOR)
    seconds = time.perf_counter() - start
    quality = psnr(to_images(decoded), reference, peak=1.0)
    tiles = len(tile_starts(latents.shape[2], DEFAULT_TILE, DEFAULT_OVERLAP)) ** 2
    print(
        f"\n{SIZE}×{SIZE}, tile {DEFAULT_TILE}, overlap {DEFAULT_OVERLAP}: full VAE decoder "
        f"plain tiles {plain:.2f} dB, shared statistics {quality:.2f} dB after "
        f"{run.calls // tiles} passes of {tiles} tiles ({seconds:.1f} s)"
    )
    assert run.calls % tiles == 0 and run.calls <= DEFAULT_PASSES * tiles
    assert quality >= SYNCED_DECODER_MIN_PSNR_DB, quality


def test_synced_encoder_against_untiled(models, synced, latents):
    images = np.clip(models["decoder"](latents), -1.0, 1.0)
    run = _Counted(synced["vae_encoder"])
    tiled = encode_tiled_synced(run, images, FACTOR)
    untiled = models["encoder"](images)
    assert tiled.shape == untiled.shape
    error, db = _posterior_mean_error(tiled, untiled)
    print(
        f"\n{SIZE}×{SIZE} image, shared statistics: posterior mean {error:.2%} off "
        f"(relative L2), {db:.2f} dB against its range, {run.calls} runs"
    )
    assert error <= SYNCED_ENCODER_MAX_RELATIVE_ERROR, error


def test_synced_one_pass_is_plain_tiles_one_tile_is_the_model(models, synced, latents):
    # Uneven tiles (40×72 latents, tile 32): a first pass normalises tiles as plain tiling does.
    odd = latents[:, :, :40, :72]
    np.testing.assert_array_equal(
        decode_tiled_synced(synced["vae_decoder"], odd, FACTOR, tile=32, passes=1),
        decode_tiled(models["decoder"], odd, FACTOR, tile=32),
    )
    small = latents[:, :, :DEFAULT_TILE, :DEFAULT_TILE]
    np.testing.assert_array_equal(
        decode_tiled_synced(synced["vae_decoder"], small, FACTOR), models["decoder"](small)
    )


@pytest.mark.parametrize("passes", [0, -1, 1.5, True, "2"])
def test_synced_bad_passes_are_refused_in_one_line_with_a_fix(passes):
    with pytest.raises(InputError) as caught:
        decode_tiled_synced(_unused, np.zeros((1, 4, 80, 80), np.float32), FACTOR, passes=passes)
    assert caught.value.fix and "\n" not in str(caught.value)


def _unused(feeds: dict) -> dict:
    raise AssertionError("refused before running")


def test_synced_needs_a_session_that_reports_statistics(models, latents):
    def plain(feeds: dict) -> dict:
        return {"sample": models["decoder"](feeds["latent_sample"])}

    with pytest.raises(InputError, match="load_vae_for_tiles") as caught:
        decode_tiled_synced(plain, latents[:, :, :40, :40], FACTOR, tile=32)
    assert "\n" not in str(caught.value)
