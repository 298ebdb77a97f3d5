"""DDIM sampling (Song et al. 2020, "Denoising Diffusion Implicit Models") in numpy.

Forward process:  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,  abar_t = prod_{s<=t} (1 - beta_s).

One DDIM step from t to t_prev, with eta in [0, 1]:
    x0     = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    sigma  = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z

The configuration keys, the timestep spacings and their quirks are those of diffusers'
`DDIMScheduler`, so a checkpoint's scheduler_config.json means the same thing here.

Precision: the noise table is diffusers' float32 table, bit for bit for the named schedules
(same betas, same rounding), stored as float64. A step evaluates its scalar coefficients and its
array arithmetic in the sample's dtype (scalars at least float32). For float32 samples that is
diffusers' own arithmetic, operation for operation, which matters: near t = T, 1/sqrt(abar_t)
reaches 1e2..1e4 and multiplies any rounding difference by as much. For float64 samples the
scalars are float64 too, where diffusers keeps them in float32: the exact math on the same table.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import numpy as np

from edgediff.errors import InputError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

_F32 = np.float32


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(
            f"unknown {name} {value!r}",
            f"use one of: {', '.join(repr(a) for a in allowed)}",
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _float32_linspace(start: float, stop: float, num: int) -> np.ndarray:
    """num evenly spaced float32 values from start to stop, as torch.linspace makes them."""
    # torch's construction (a float32 step, each point taken from its nearer end and rounded
    # once) reproduces diffusers' betas bit for bit; the float32 nearest each exact point is off
    # by an ulp in places, which moves x0 near t = T by up to 1e-6.
    lo, hi = _F32(start), _F32(stop)
    if num == 1:
        return np.array([lo], dtype=_F32)
    step = np.float64((hi - lo) / _F32(num - 1))
    i = np.arange(num)
    from_start = np.float64(lo) + step * i
    from_stop = np.float64(hi) - step * (num - 1 - i)
    return np.where(i < num // 2, from_start, from_stop).astype(_F32)


def squaredcos_cap_v2_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the cosine schedule (Nichol & Dhariwal 2021), capped at max_beta, float32."""

    # abar(t) = cos^2((t + s) / (1 + s) * pi / 2) with s = 0.008, t in [0, 1]
    def abar(t: np.ndarray) -> np.ndarray:
        return np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2

    t = np.arange(num_train_timesteps, dtype=np.float64)
    betas = 1.0 - abar((t + 1) / num_train_timesteps) / abar(t / num_train_timesteps)
    return np.minimum(betas, max_beta).astype(_F32)


def betas_for_schedule(
    beta_schedule: str,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
) -> np.ndarray:
    """The float32 betas of a named schedule ("linear", "scaled_linear", "squaredcos_cap_v2")."""
    _choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if beta_schedule == "linear":
        return _float32_linspace(beta_start, beta_end, num_train_timesteps)
    if beta_schedule == "scaled_linear":
        # Stable Diffusion's schedule: linear in sqrt(beta).
        root = _float32_linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps)
        return root * root
    return squaredcos_cap_v2_betas(num_train_timesteps)


def alphas_cumprod_from_betas(betas: np.ndarray) -> np.ndarray:
    """abar_t = prod_{s<=t} (1 - beta_s), rounded to float32 like the reference table."""
    alphas = _F32(1.0) - np.asarray(betas, dtype=_F32)
    # The running product is accumulated in float64 and each entry rounded once, which is how
    # torch.cumprod produces diffusers' float32 table.
    return np.cumprod(alphas.astype(np.float64)).astype(_F32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Float32 betas rescaled so the final abar is exactly 0 (Lin et al. 2023, Algorithm 1)."""
    # "Common Diffusion Noise Schedules and Sample Steps are Flawed": keep sqrt(abar_0), move
    # sqrt(abar_T) to 0 by an affine map of sqrt(abar), then undo the cumulative product.
    # torch's float32 sqrt is not always correctly rounded, so diffusers' result can differ
    # from this one by an ulp here and there.
    betas = np.asarray(betas, dtype=_F32)
    sqrt_abar = np.sqrt(np.cumprod((_F32(1.0) - betas).astype(np.float64)).astype(_F32))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar * sqrt_abar
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return (_F32(1.0) - alphas).astype(_F32)


def spaced_timesteps(
    timestep_spacing: str,
    num_train_timesteps: int,
    num_inference_steps: int,
    steps_offset: int = 0,
) -> np.ndarray:
    """The descending int64 timesteps a sampler visits (diffusers' three spacings)."""
    _choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
    if timestep_spacing == "linspace":
        ts = np.linspace(0, num_train_timesteps - 1, num_inference_steps).round()
    elif timestep_spacing == "leading":
        # steps_offset only shifts "leading", as in diffusers' DDIM.
        ratio = num_train_timesteps // num_inference_steps
        ts = np.arange(num_inference_steps) * ratio + steps_offset
    else:
        ratio = num_train_timesteps / num_inference_steps
        ts = np.round(np.arange(num_train_timesteps, 0, -ratio)) - 1
    return np.sort(ts.astype(np.int64))[::-1].copy()


def dynamic_threshold(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Imagen's dynamic thresholding (Saharia et al. 2022) of x0, per batch item."""
    # s = the ratio-quantile of |x0|, kept in [1, max_value]; x0 is clipped to [-s, s] and
    # divided by s, so saturated pixels are pulled in rather than flattened.
    flat = x0.reshape(x0.shape[0], -1)
    s = np.quantile(np.abs(flat), ratio, axis=1, keepdims=True).astype(flat.dtype)
    s = np.minimum(np.maximum(s, 1), max_value).astype(flat.dtype)
    return (np.clip(flat, -s, s) / s).reshape(x0.shape).astype(x0.dtype)


def ddim_sigma(abar_t: np.floating, abar_prev: np.floating, eta: float) -> np.floating:
    """sigma_t = eta sqrt((1 - abar_prev)/(1 - abar_t) (1 - abar_t/abar_prev)), in abar's dtype."""
    variance = ((1 - abar_prev) / (1 - abar_t)) * (1 - abar_t / abar_prev)
    return eta * np.sqrt(variance)


class DDIMScheduler:
    """Stateless DDIM sampler configured like diffusers' DDIMScheduler."""

    init_noise_sigma: float = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        if not _is_int(num_train_timesteps) or num_train_timesteps < 1:
            raise InputError(
                f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}",
                "use the value from the checkpoint's scheduler config (usually 1000)",
            )
        _choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if not 0.0 < dynamic_thresholding_ratio <= 1.0:
            raise InputError(
                f"dynamic_thresholding_ratio must be in (0, 1], got {dynamic_thresholding_ratio!r}",
                "use a quantile such as 0.995",
            )
        for name, beta in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not (isinstance(beta, numbers.Real) and 0.0 <= beta <= 1.0):
                raise InputError(
                    f"{name} must be a number in [0, 1], got {beta!r}",
                    "use the values from the checkpoint's scheduler config (SD: 0.00085 .. 0.012)",
                )
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.beta_schedule = beta_schedule
        self.clip_sample = bool(clip_sample)
        self.set_alpha_to_one = bool(set_alpha_to_one)
        self.steps_offset = int(steps_offset)
        self.prediction_type = prediction_type
        self.thresholding = bool(thresholding)
        self.dynamic_thresholding_ratio = float(dynamic_thresholding_ratio)
        self.clip_sample_range = float(clip_sample_range)
        self.sample_max_value = float(sample_max_value)
        self.timestep_spacing = timestep_spacing
        self.rescale_betas_zero_snr = bool(rescale_betas_zero_snr)

        if trained_betas is not None:
            # A schedule given as numbers makes beta_schedule irrelevant, as in diffusers.
            betas = np.asarray(trained_betas, dtype=_F32)
            if betas.shape != (self.num_train_timesteps,):
                raise InputError(
                    f"trained_betas has shape {betas.shape}, "
                    f"expected ({self.num_train_timesteps},)",
                    "give one beta per training timestep, or fix num_train_timesteps",
                )
        else:
            betas = betas_for_schedule(
                beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end
            )
        if not (np.isfinite(betas).all() and (betas >= 0).all() and (betas <= 1).all()):
            raise InputError(
                "the scheduler's betas must lie in [0, 1] (beta_start "
                f"{self.beta_start:g}, beta_end {self.beta_end:g}, schedule {beta_schedule})",
                "use the values from the checkpoint's scheduler config (SD: 0.00085 .. 0.012)",
            )
        if self.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas: np.ndarray = betas.astype(np.float64)
        self.alphas_cumprod: np.ndarray = alphas_cumprod_from_betas(betas).astype(np.float64)
        # abar for "before t = 0": the clean image, or (SD's choice) the first table entry.
        self.final_alpha_cumprod: float = (
            1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])
        )

    @classmethod
    def from_config(cls, config: dict) -> DDIMScheduler:
        """Build from a diffusers scheduler config dict, ignoring keys DDIM does not use."""
        known = inspect.signature(cls.__init__).parameters.keys() - {"self"}
        return cls(**{k: v for k, v in config.items() if k in known})

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The descending int64 timesteps of a num_inference_steps-step sampling run."""
        self._check_steps(num_inference_steps)
        timesteps = spaced_timesteps(
            self.timestep_spacing,
            self.num_train_timesteps,
            int(num_inference_steps),
            self.steps_offset,
        )
        if self.prediction_type == "epsilon" and self.alphas_cumprod[timesteps[0]] == 0.0:
            # x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) has no value at abar = 0.
            raise InputError(
                f"an epsilon-predicting model cannot start at timestep {timesteps[0]}, where "
                "this zero-terminal-SNR schedule leaves no signal (abar = 0)",
                "Zero terminal SNR (rescale_betas_zero_snr) needs a v_prediction model, or "
                "'leading' timestep spacing",
            )
        return timesteps

    def previous_timestep(self, timestep: int, num_inference_steps: int) -> int:
        """The timestep a step from `timestep` lands on; negative means "past the end"."""
        self._check_steps(num_inference_steps)
        # A fixed stride for every spacing, as diffusers' DDIM does, even where "trailing" or
        # "linspace" timesteps are not evenly spaced.
        return int(timestep) - self.num_train_timesteps // int(num_inference_steps)

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        num_inference_steps: int,
        eta: float = 0.0,
        noise: np.ndarray | None = None,
        use_clipped_model_output: bool = False,
    ) -> np.ndarray:
        """One DDIM step: x_t at `timestep` to x_prev, in the dtype of `sample`."""
        sample = np.asarray(sample)
        model_output = np.asarray(model_output)
        dtype = sample.dtype if np.issubdtype(sample.dtype, np.floating) else np.dtype(np.float64)
        if model_output.shape != sample.shape:
            raise InputError(
                f"model_output has shape {model_output.shape} but sample has {sample.shape}",
                "pass the model's output for this very sample",
            )
        if not 0.0 <= eta <= 1.0:
            raise InputError(f"eta must be in [0, 1], got {eta!r}", "use 0 (DDIM) up to 1 (DDPM)")
        if eta > 0 and noise is None:
            raise InputError(
                f"eta={eta} needs noise, got noise=None",
                "pass standard normal noise shaped like the sample (the caller owns randomness)",
            )
        t = self._check_timestep(timestep)
        prev = self.previous_timestep(t, num_inference_steps)

        # Scalars in the sample's dtype, but never below float32: abar_T underflows in fp16.
        ftype = np.promote_types(dtype, np.float32).type
        a_t = ftype(self.alphas_cumprod[t])
        a_prev = ftype(self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod)
        sigma = ddim_sigma(a_t, a_prev, eta)
        # Rounding can take 1 - abar_prev - sigma^2 a hair below 0 when abar_prev is within an
        # ulp of 1 (float32, eta = 1); diffusers returns NaN there, 0 is the exact limit.
        direction_scale = np.sqrt(np.maximum(1 - a_prev - sigma * sigma, 0))
        as_dtype = dtype.type
        sqrt_a, sqrt_b = as_dtype(np.sqrt(a_t)), as_dtype(np.sqrt(1 - a_t))

        x = sample.astype(dtype, copy=False)
        out = model_output.astype(dtype, copy=False)
        if self.prediction_type == "epsilon":
            x0 = (x - sqrt_b * out) / sqrt_a
            eps = out
        elif self.prediction_type == "sample":
            x0 = out
            eps = (x - sqrt_a * x0) / sqrt_b
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0
            x0 = sqrt_a * x - sqrt_b * out
            eps = sqrt_a * out + sqrt_b * x

        if self.thresholding:
            x0 = dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        elif self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range).astype(dtype)
        if use_clipped_model_output:
            # The eps consistent with the clipped x0, so the direction term agrees with it.
            eps = (x - sqrt_a * x0) / sqrt_b

        x_prev = as_dtype(np.sqrt(a_prev)) * x0 + as_dtype(direction_scale) * eps
        if eta > 0:
            noise = np.asarray(noise)
            if noise.shape != sample.shape:
                raise InputError(
                    f"noise has shape {noise.shape} but sample has {sample.shape}",
                    "pass noise shaped like the sample",
                )
            x_prev = x_prev + as_dtype(sigma) * noise.astype(dtype, copy=False)
        return x_prev.astype(dtype, copy=False)

    def add_noise(
        self, original: np.ndarray, noise: np.ndarray, timestep: int | np.ndarray
    ) -> np.ndarray:
        """Forward process q(x_t | x_0); `timestep` is one int or one per batch item."""
        original = np.asarray(original)
        noise = np.asarray(noise)
        dtype = (
            original.dtype if np.issubdtype(original.dtype, np.floating) else np.dtype(np.float64)
        )
        if noise.shape != original.shape:
            raise InputError(
                f"noise has shape {noise.shape} but original has {original.shape}",
                "pass noise shaped like the original",
            )
        ts = np.asarray(timestep)
        if not np.issubdtype(ts.dtype, np.integer) or ts.ndim > 1:
            raise InputError(
                f"timestep must be an int or a 1-D int array, got {timestep!r}",
                "pass integer timesteps",
            )
        if ts.size and (ts.min() < 0 or ts.max() >= self.num_train_timesteps):
            raise InputError(
                f"timestep {timestep!r} is outside [0, {self.num_train_timesteps})",
                "use timesteps from DDIMScheduler.timesteps()",
            )
        abar = self.alphas_cumprod[ts].astype(dtype)
        # One coefficient per batch item, broadcast over the remaining axes.
        shape = (-1,) + (1,) * (original.ndim - 1) if ts.ndim else ()
        signal = np.sqrt(abar).reshape(shape)
        noise_scale = np.sqrt(1 - abar).reshape(shape)
        return (signal * original.astype(dtype) + noise_scale * noise.astype(dtype)).astype(dtype)

    def _check_steps(self, num_inference_steps: int) -> None:
        if not _is_int(num_inference_steps) or not (
            1 <= num_inference_steps <= self.num_train_timesteps
        ):
            raise InputError(
                f"num_inference_steps={num_inference_steps!r} is not an integer in "
                f"[1, {self.num_train_timesteps}]",
                f"pick between 1 and {self.num_train_timesteps} steps",
            )

    def _check_timestep(self, timestep: int) -> int:
        ts = np.asarray(timestep)
        if ts.ndim != 0 or not np.issubdtype(ts.dtype, np.integer):
            raise InputError(
                f"timestep must be one integer, got {timestep!r}",
                "pass an element of DDIMScheduler.timesteps()",
            )
        t = int(ts)
        if not 0 <= t < self.num_train_timesteps:
            raise InputError(
                f"timestep {t} is outside [0, {self.num_train_timesteps})",
                "pass an element of DDIMScheduler.timesteps()",
            )
        return t
