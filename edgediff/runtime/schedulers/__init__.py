"""Noise schedulers for the runtime, in numpy (no torch)."""

from __future__ import annotations

from edgediff.runtime.schedulers.ddim import DDIMScheduler, betas_for_schedule

__all__ = ["DDIMScheduler", "betas_for_schedule"]
