"""Metrics (numpy): paired PSNR, SSIM; over evaluator readings, attribute accuracy and KID."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgediff.data.shapes import ATTRIBUTES, Attributes

if TYPE_CHECKING:
    from edgediff.metrics.evaluator import Readings


def psnr(actual: np.ndarray, reference: np.ndarray, peak: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB of `actual` against `reference`; inf when equal.

    `peak` defaults to the reference's range (max - min): latents have no natural peak, and
    their range is what an error must be small against. Images in [0, 1] use peak 1.
    """
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs {reference.shape}")
    mse = float(np.mean((actual - reference) ** 2))
    if mse == 0.0:
        return float("inf")
    if peak is None:
        peak = float(reference.max() - reference.min())
    return 10.0 * float(np.log10(peak**2 / mse))


def paired_psnr(actual: np.ndarray, reference: np.ndarray, peak: float | None = None) -> float:
    """Mean over samples (axis 0) of each sample's PSNR against its own reference, in dB."""
    if len(actual) != len(reference):
        raise ValueError(f"{len(actual)} samples against {len(reference)} references")
    return float(np.mean([psnr(a, r, peak) for a, r in zip(actual, reference, strict=True)]))


def _gaussian_filter(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """'valid' 2-D Gaussian filtering over axes 1 and 2 of an N×H×W×C array (separable)."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    size = len(kernel)
    h, w = x.shape[1] - size + 1, x.shape[2] - size + 1
    rows = sum(kernel[i] * x[:, i : i + h] for i in range(size))
    return sum(kernel[j] * rows[:, :, j : j + w] for j in range(size))


def ssim(actual: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004: 11×11 Gaussian window, sigma 1.5,
    K1 0.01, K2 0.03) of N×H×W×C images, over pixels, channels and images; 1 when equal."""
    x = np.asarray(actual, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 4 or min(x.shape[1:3]) < 11:
        raise ValueError(f"ssim needs two N×H×W×C arrays of one shape, sides >= 11; got {x.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _gaussian_filter(x), _gaussian_filter(y)
    var_x = _gaussian_filter(x * x) - mu_x**2
    var_y = _gaussian_filter(y * y) - mu_y**2
    cov = _gaussian_filter(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(index.mean())


def attribute_accuracy(readings: Readings, targets: Sequence[Attributes]) -> dict[str, float]:
    """Share of images read right per attribute, and 'all': the share with all four right."""
    n = len(targets)
    if n == 0:
        raise ValueError("no targets to score against")
    right = np.zeros((n, len(ATTRIBUTES)), dtype=bool)
    for i, attribute in enumerate(ATTRIBUTES):
        read = readings.labels[attribute]
        if len(read) != n:
            raise ValueError(f"{len(read)} readings of {attribute} for {n} targets")
        right[:, i] = [r == getattr(t, attribute) for r, t in zip(read, targets, strict=True)]
    result = {a: float(right[:, i].mean()) for i, a in enumerate(ATTRIBUTES)}
    result["all"] = float(right.all(axis=1).mean())
    return result


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y / d + 1)^3 for every pair of rows."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two equal-size samples under the cubic polynomial kernel."""
    m = x.shape[0]
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    # Within-sample sums leave out the diagonal (k(x_i, x_i)); that is what removes the bias.
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(
    features_a: np.ndarray,
    features_b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): mean and std of MMD² over subsets.

    Each subset draws min(subset_size, len(a), len(b)) rows of each set without replacement, as
    the reference implementations (TF-GAN, torch-fidelity, clean-fid) do.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two [n, d] feature arrays of one d, got {a.shape} and {b.shape}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {a.shape[0]}, {b.shape[0]}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            mmd2_unbiased(
                a[rng.choice(a.shape[0], m, replace=False)],
                b[rng.choice(b.shape[0], m, replace=False)],
            )
            for _ in range(subsets)
        ]
    )
    return float(values.mean()), float(values.std())
