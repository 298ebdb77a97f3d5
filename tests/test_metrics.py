"""Paired accuracy metrics and latency timing against values known in closed form."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from edgediff.metrics.quality import paired_psnr, psnr
from edgediff.metrics.timing import measure_latency


def test_psnr_of_identical_arrays_is_infinite():
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8))
    assert psnr(x, x) == math.inf
    assert paired_psnr(x, x) == math.inf


def test_psnr_of_a_known_noise_level():
    rng = np.random.default_rng(1)
    reference = rng.uniform(0.0, 1.0, size=200_000)
    reference[:2] = 0.0, 1.0  # range exactly 1
    sigma = 0.01
    noisy = reference + rng.normal(0.0, sigma, size=reference.shape)
    # PSNR = 10 log10(peak^2 / MSE) = 20 log10(1 / 0.01) = 40 dB.
    assert psnr(noisy, reference) == pytest.approx(40.0, abs=0.05)
    assert psnr(noisy, reference, peak=2.0) == pytest.approx(40.0 + 20 * math.log10(2), abs=0.05)


def test_paired_psnr_averages_each_sample_against_its_own_range():
    reference = np.stack([np.linspace(0, 1, 1000), np.linspace(0, 10, 1000)])
    noise = np.stack([np.full(1000, 0.01), np.full(1000, 0.1)])
    # Both samples err by 1 % of their own range: 40 dB each.
    assert paired_psnr(reference + noise, reference) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(reference[0], reference)


def test_latency_excludes_warmup_runs():
    calls = []

    def call():
        # The first (warm-up) call is slow, like a session's first run.
        time.sleep(0.2 if not calls else 0.001)
        calls.append(1)

    latency = measure_latency(call, runs=5, warmup=1)
    assert len(calls) == 6 and latency.runs == 5
    assert latency.median < 0.05 and latency.p90 < 0.05
