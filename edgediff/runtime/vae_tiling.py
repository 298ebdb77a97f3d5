"""Tiled VAE decoding and encoding: run the VAE on overlapping tiles and blend them.

A VAE's activations grow with the image (the decoder's last blocks work at full resolution),
so a large image can exhaust a device's memory; tile by tile it needs the output plus one
tile's activations. Neighbouring tiles overlap and are cross-faded with separable cosine ramps
normalised to a partition of unity; the image border keeps full weight.

Chosen by measurement (shipped bundle, factor 4, ONNX Runtime CPU, 2 threads; PSNR of images
in [0, 1] against the untiled decode of a 512×512 generation, "a big red circle on the left",
seed 0, 128×128 latents):

    tile/overlap (latent px)   16/8   32/8   48/8   64/0   64/8   96/8
    full VAE decoder, dB       20.2   23.6   24.8   25.0   27.1   33.1
    tiny decoder, dB           41.1   45.5   48.3   31.6   71.1   85.8

- The full VAE's error is its GroupNorm: each tile normalises with its own statistics, which
  shifts the colours of the whole tile (a lone 128 px crop is off by as much at its centre as
  at its edge), so it shrinks with the tile, not the overlap, and ramps cannot remove it.
  Given the whole image's GroupNorm statistics (measured by rewriting the graph), the same
  tiles reach 43.7 / 52.1 / 63.4 dB at overlap 4 / 8 / 16 (tile 64, two tiles an axis): 40 dB
  needs statistics shared across tiles, which the model callable here cannot do.
- Overlap: the smallest with >= 40 dB and margin where GroupNorm is out of the way is 8
  (tiny decoder, two tiles an axis, tile 64: 33.0 / 40.9 / 45.3 / 53.9 / 65.2 dB at overlap
  0 / 2 / 4 / 8 / 16); tile_starts spreads tiles evenly, so real overlaps are often larger.
- Ramp: cosine beats linear by 3-9 dB where tiles are otherwise exact (53.9 vs 50.7 dB at
  64/8 tiny; 52.1 vs 48.4 dB with shared GroupNorm statistics) and at most 0.3 dB behind it
  under per-tile GroupNorm; smoothstep falls in between.
- Tile 64 (diffusers' default, 512 px for SD's factor 8) because accuracy grows with the tile.
- Encoder at 64/8: the posterior mean is 22 % off in relative L2 (10.8 % at tile 96; about 0.2 %
  with shared statistics), GroupNorm again.
- Cost: 512×512, full decoder 1.1 s untiled vs 2.8 s tiled (3×3 tiles); tiny 0.15 vs 0.42 s;
  encoder 0.49 vs 1.08 s. 1024×1024 full decoder: peak memory +660 MiB untiled vs +48 MiB
  tiled, 7.5 vs 6.5 s.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgediff.errors import InputError

DEFAULT_TILE = 64  # latent pixels
DEFAULT_OVERLAP = 8  # latent pixels


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length), neighbours sharing at least `overlap`."""
    _check_tiling(tile, overlap)
    if length < 1:
        raise InputError(f"length must be at least 1, got {length}", "Pass a non-empty axis")
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = -(-(length - tile) // stride) + 1
    # Evenly spread rather than stride-spaced, so no pair overlaps far more than the others;
    # spacings are floor/ceil of (length - tile) / (count - 1) <= stride, keeping the overlap.
    return [i * (length - tile) // (count - 1) for i in range(count)]


def ramp(size: int) -> np.ndarray:
    """Rising cosine weights over `size` pixels at pixel centres; ramp + reversed ramp == 1."""
    # Cosine rather than linear: it gives a tile's last pixels, where zero padding bends the
    # convolutions, less weight (measured in the module docstring).
    x = (np.arange(size, dtype=np.float64) + 0.5) / max(size, 1)
    return np.sin(0.5 * np.pi * x) ** 2


def axis_weights(starts: list[int], tile: int, length: int, scale: int) -> list[np.ndarray]:
    """Per-tile blending weights along one axis, in pixels of `scale` per latent pixel,
    summing to 1 at every pixel."""
    ends = [min(start + tile, length) for start in starts]
    weights = []
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        w = np.ones((end - start) * scale)
        # Ramp over the overlap actually shared with each neighbour; none at the image border.
        before = ends[i - 1] - start if i > 0 else 0
        after = end - starts[i + 1] if i + 1 < len(starts) else 0
        if before:
            w[: before * scale] *= ramp(before * scale)
        if after:
            w[len(w) - after * scale :] *= ramp(after * scale)[::-1]
        weights.append(w)
    total = np.zeros(length * scale)
    for start, w in zip(starts, weights, strict=True):
        total[start * scale : start * scale + len(w)] += w
    # Normalised so the blend is a partition of unity even where three tiles overlap.
    return [
        (w / total[start * scale : start * scale + len(w)]).astype(np.float32)
        for start, w in zip(starts, weights, strict=True)
    ]


def decode_tiled(
    decode: Callable[[np.ndarray], np.ndarray],
    latents: np.ndarray,
    factor: int,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
) -> np.ndarray:
    """Decoder output N×3×(h·factor)×(w·factor) of latents N×C×h×w, decoded tile by tile."""
    _check_array(latents, "latents")
    return _tiled(decode, latents, 1, factor, tile, overlap)


def encode_tiled(
    encode: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    factor: int,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
) -> np.ndarray:
    """Encoder output N×K×(H/factor)×(W/factor) of images N×3×H×W, encoded tile by tile
    (tile and overlap in latent pixels)."""
    _check_array(images, "images")
    _check_factor(factor)
    height, width = images.shape[2:]
    if height % factor or width % factor:
        raise InputError(
            f"images of {height}×{width} are not multiples of the VAE's factor {factor}",
            f"Resize them to multiples of {factor}",
        )
    return _tiled(encode, images, factor, 1, tile, overlap)


def _tiled(
    run: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    scale_in: int,
    scale_out: int,
    tile: int,
    overlap: int,
) -> np.ndarray:
    """`run` on tiles of x, blended; scales are pixels per latent pixel on each side."""
    _check_factor(scale_in * scale_out)
    _check_tiling(tile, overlap)
    n, height, width = x.shape[0], x.shape[2] // scale_in, x.shape[3] // scale_in
    if height <= tile and width <= tile:  # one tile: nothing to blend, and exact
        return _checked(run(x), n, height * scale_out, width * scale_out)
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    row_weights = axis_weights(rows, tile, height, scale_out)
    col_weights = axis_weights(cols, tile, width, scale_out)
    out = None
    for top, wy in zip(rows, row_weights, strict=True):
        for left, wx in zip(cols, col_weights, strict=True):
            th, tw = len(wy) // scale_out, len(wx) // scale_out
            tile_in = x[..., _span(top, th, scale_in), _span(left, tw, scale_in)]
            part = _checked(run(tile_in), n, len(wy), len(wx))
            if out is None:  # the channel count is the model's to say
                shape = (n, part.shape[1], height * scale_out, width * scale_out)
                out = np.zeros(shape, np.float32)
            target = (..., _span(top, th, scale_out), _span(left, tw, scale_out))
            out[target] += part * wy[:, None] * wx[None, :]
    return out


def _span(start: int, size: int, scale: int) -> slice:
    return slice(start * scale, (start + size) * scale)


def _checked(part: np.ndarray, n: int, height: int, width: int) -> np.ndarray:
    part = np.asarray(part)
    if part.ndim != 4 or part.shape[0] != n or part.shape[2:] != (height, width):
        raise InputError(
            f"the model returned {part.shape} for a tile, expected N={n} and {height}×{width}",
            "Pass the factor the VAE scales by (the bundle's vae_scale_factor)",
        )
    return part.astype(np.float32, copy=False)


def _check_array(x: np.ndarray, name: str) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or 0 in x.shape:
        shape = getattr(x, "shape", type(x).__name__)
        raise InputError(f"{name} must be a non-empty N×C×H×W array, got {shape}", "Pass NCHW")


def _check_factor(factor: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise InputError(
            f"factor must be a positive integer, got {factor!r}",
            "Pass the bundle's vae_scale_factor",
        )


def _check_tiling(tile: int, overlap: int) -> None:
    if tile < 1:
        raise InputError(
            f"tile must be at least 1 latent pixel, got {tile}", f"Use e.g. {DEFAULT_TILE}"
        )
    if overlap < 0:
        raise InputError(f"overlap must be 0 or more, got {overlap}", f"Use e.g. {DEFAULT_OVERLAP}")
    if overlap >= tile:
        raise InputError(
            f"overlap {overlap} must be smaller than the tile {tile}",
            f"Use an overlap below the tile (defaults: tile {DEFAULT_TILE}, "
            f"overlap {DEFAULT_OVERLAP})",
        )
