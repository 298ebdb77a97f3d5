"""Latency of backend calls: warm-up first, then the median and p90 of timed runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Seconds per call over timed runs (warm-up runs excluded)."""

    median: float
    p90: float
    runs: int

    def as_dict(self) -> dict[str, float]:
        """JSON-ready form (seconds rounded to microseconds)."""
        return {"median": round(self.median, 6), "p90": round(self.p90, 6), "runs": self.runs}


def summarize(seconds: list[float]) -> Latency:
    """Median and p90 of timed calls."""
    if not seconds:
        raise ValueError("no timed runs to summarize")
    return Latency(float(np.median(seconds)), float(np.percentile(seconds, 90)), len(seconds))


def measure_latency(call: Callable[[], object], runs: int = 20, warmup: int = 3) -> Latency:
    """Time `call()` `runs` times after `warmup` untimed calls."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return summarize(seconds)
