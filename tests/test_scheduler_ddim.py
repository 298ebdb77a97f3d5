"""The numpy DDIMScheduler against diffusers' DDIMScheduler: same tables, timesteps and samples."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from edgediff.errors import InputError
from edgediff.runtime.schedulers import DDIMScheduler, betas_for_schedule
from edgediff.tolerances import SCHEDULER_ATOL

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
STEPS = (1, 2, 4, 8, 50)
ETAS = (0.0, 1.0)
SHAPE = (2, 4, 8, 8)
PATTERN = np.linspace(-3.0, 3.0, int(np.prod(SHAPE))).reshape(SHAPE)

# Stable Diffusion 1.x's scheduler_config.json, which names a PNDM scheduler.
SD15_PNDM_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def schedule_config(beta_schedule: str, **config) -> dict:
    """A scheduler config; scaled_linear gets SD's beta range, as it is used in practice."""
    if beta_schedule == "scaled_linear":
        config = {"beta_start": 0.00085, "beta_end": 0.012, **config}
    return {"beta_schedule": beta_schedule, **config}


def reference(**config):
    """diffusers' DDIMScheduler, its float32 abar table held in float64 (same values)."""
    return in_float64(diffusers.DDIMScheduler(**config))


def in_float64(ref):
    """`ref` with its abar table (and final abar) converted to float64, values unchanged."""
    # diffusers indexes a float32 table, so even float64 samples get float32 step coefficients,
    # rounded by torch's float32 sqrt; 1/sqrt(abar_t) amplifies that to ~1e-4 near t = T.
    # The same values in float64 make it do the exact math, which 1e-6 can hold it to.
    ref.alphas_cumprod = ref.alphas_cumprod.double()
    ref.final_alpha_cumprod = ref.final_alpha_cumprod.double()
    return ref


def fake_model(x, t, abar, prediction_type, x0_scale=1.0):
    """A deterministic stand-in for a UNet: a bounded x0 guess, expressed as the model would."""
    x0 = x0_scale * (0.6 * np.tanh(x) + 0.3 * np.sin(PATTERN + t / 50.0))
    a = abar[t]
    eps = (x - np.sqrt(a) * x0) / np.sqrt(1.0 - a)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return np.sqrt(a) * eps - np.sqrt(1.0 - a) * x0


def compare_run(ours, ref, steps, eta, *, dtype=np.float64, x0_scale=1.0, clipped_eps=False):
    """Sample with both on diffusers' trajectory; (worst abs error, its timestep, timesteps ok)."""
    ref.set_timesteps(steps)
    timesteps = ours.timesteps(steps)
    same_timesteps = timesteps.dtype == np.int64 and np.array_equal(
        timesteps, ref.timesteps.numpy()
    )
    abar = ref.alphas_cumprod.double().numpy()
    noise_rng = np.random.default_rng(1)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(SHAPE).astype(dtype))
    worst, worst_t = 0.0, None
    for t in ref.timesteps.numpy():
        z = noise_rng.standard_normal(SHAPE).astype(dtype)
        out = fake_model(x.numpy().astype(np.float64), int(t), abar, ours.prediction_type, x0_scale)
        out = out.astype(dtype)
        mine = ours.step(
            out, t, x.numpy(), steps, eta=eta, noise=z, use_clipped_model_output=clipped_eps
        )
        x = ref.step(
            torch.from_numpy(out),
            int(t),
            x,
            eta=eta,
            use_clipped_model_output=clipped_eps,
            variance_noise=torch.from_numpy(z),
        ).prev_sample
        err = float(np.max(np.abs(mine.astype(np.float64) - x.numpy())))
        if not err <= worst:  # also catches NaN
            worst, worst_t = err, int(t)
    return worst, worst_t, same_timesteps


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("timestep_spacing", SPACINGS)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_matches_diffusers_step_by_step(prediction_type, timestep_spacing, beta_schedule):
    failures = []
    for set_alpha_to_one, steps_offset in itertools.product((True, False), (0, 1)):
        config = schedule_config(
            beta_schedule,
            prediction_type=prediction_type,
            timestep_spacing=timestep_spacing,
            set_alpha_to_one=set_alpha_to_one,
            steps_offset=steps_offset,
        )
        ours, ref = DDIMScheduler(**config), reference(**config)
        for steps, eta in itertools.product(STEPS, ETAS):
            err, t, same_timesteps = compare_run(ours, ref, steps, eta)
            case = f"{config} steps={steps} eta={eta}"
            if not same_timesteps:
                failures.append(f"{case}: timesteps {ours.timesteps(steps)} != {ref.timesteps}")
            if not err <= SCHEDULER_ATOL:
                failures.append(f"{case}: max abs error {err:.3g} at t={t}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("timestep_spacing", SPACINGS)
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_uneven_strides_keep_diffusers_fixed_stride(timestep_spacing, steps_offset):
    # With steps not dividing 1000, trailing/linspace timesteps are unevenly spaced, yet
    # diffusers steps from t to t - 1000 // steps: the quirk a pipeline must reproduce.
    config = schedule_config(
        "scaled_linear",
        timestep_spacing=timestep_spacing,
        steps_offset=steps_offset,
        set_alpha_to_one=False,
    )
    ours, ref = DDIMScheduler(**config), reference(**config)
    for steps in (3, 7, 999):
        err, t, same_timesteps = compare_run(ours, ref, steps, eta=1.0)
        assert same_timesteps, f"steps={steps}"
        assert err <= SCHEDULER_ATOL, f"steps={steps}: {err:.3g} at t={t}"
    assert ours.previous_timestep(666, 3) == 333


def test_alphas_cumprod_is_diffusers_table_bit_for_bit():
    for beta_schedule in BETA_SCHEDULES:
        config = schedule_config(beta_schedule)
        ours, ref = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
        assert ours.alphas_cumprod.dtype == np.float64
        np.testing.assert_array_equal(
            ours.alphas_cumprod, ref.alphas_cumprod.double().numpy(), err_msg=beta_schedule
        )
        np.testing.assert_array_equal(
            betas_for_schedule(
                beta_schedule, 1000, config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
            ),
            ref.betas.numpy(),
        )


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("clip_sample_range", [1.0, 1.5])
def test_clip_sample(prediction_type, clip_sample_range):
    config = schedule_config(
        "scaled_linear",
        prediction_type=prediction_type,
        clip_sample=True,
        clip_sample_range=clip_sample_range,
        steps_offset=1,
    )
    ours, ref = DDIMScheduler(**config), reference(**config)
    for steps, eta, clipped_eps in itertools.product((1, 4, 50), ETAS, (False, True)):
        # x0 up to 2.7: well past the clip range, so clipping changes every step.
        err, t, _ = compare_run(ours, ref, steps, eta, x0_scale=3.0, clipped_eps=clipped_eps)
        case = f"steps={steps} eta={eta} use_clipped_model_output={clipped_eps}"
        assert err <= SCHEDULER_ATOL, f"{case}: {err:.3g} at t={t}"
    unclipped = DDIMScheduler(**{**config, "clip_sample": False})
    x = np.full(SHAPE, 0.5)
    out = fake_model(x, 501, ours.alphas_cumprod, prediction_type, x0_scale=3.0)
    assert not np.allclose(ours.step(out, 501, x, 2), unclipped.step(out, 501, x, 2))


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_dynamic_thresholding(prediction_type):
    config = schedule_config(
        "linear",
        prediction_type=prediction_type,
        thresholding=True,
        dynamic_thresholding_ratio=0.9,
        sample_max_value=2.0,
    )
    ours, ref = DDIMScheduler(**config), reference(**config)
    # |x0|'s 0.9-quantile per batch item: ~0.35 (s = 1), ~1.4 (s in (1, 2)), ~4.3 (s capped at 2).
    for x0_scale, steps, eta in itertools.product((0.5, 2.0, 6.0), (1, 8, 50), ETAS):
        err, t, _ = compare_run(ours, ref, steps, eta, x0_scale=x0_scale)
        case = f"x0_scale={x0_scale} steps={steps} eta={eta}"
        assert err <= SCHEDULER_ATOL, f"{case}: {err:.3g} at t={t}"


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_rescale_betas_zero_snr(beta_schedule):
    config = schedule_config(beta_schedule, rescale_betas_zero_snr=True)
    ours, ref = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    assert ours.alphas_cumprod[-1] == 0.0
    # The rescale takes float32 square roots; torch's are not always correctly rounded, so the
    # tables may differ by an ulp here and there.
    table_err = np.max(np.abs(ours.alphas_cumprod - ref.alphas_cumprod.double().numpy()))
    assert table_err <= SCHEDULER_ATOL
    # Stepping on a zero-SNR table (abar_T = 0 exactly), given the same betas.
    for prediction_type, spacing in itertools.product(["v_prediction", "sample"], SPACINGS):
        step_config = {
            "trained_betas": ours.betas,
            "prediction_type": prediction_type,
            "timestep_spacing": spacing,
        }
        ours_step, ref_step = DDIMScheduler(**step_config), reference(**step_config)
        np.testing.assert_array_equal(ours_step.alphas_cumprod, ours.alphas_cumprod)
        # eta < 1: at eta = 1 diffusers' first step from abar_T = 0 is NaN (below).
        for steps, eta in itertools.product((1, 8, 50), (0.0, 0.5)):
            err, t, _ = compare_run(ours_step, ref_step, steps, eta)
            case = f"{prediction_type} {spacing} steps={steps} eta={eta}"
            assert err <= SCHEDULER_ATOL, f"{case}: {err:.3g} at t={t}"


def test_zero_snr_first_step_at_eta_one_is_the_exact_limit():
    # From abar_T = 0 with eta = 1, sigma^2 = 1 - abar_prev and the direction term vanishes;
    # diffusers' 1 - abar_prev - sigma^2 rounds below 0 there and its sample turns NaN.
    ours = DDIMScheduler(
        rescale_betas_zero_snr=True, prediction_type="v_prediction", clip_sample=False
    )
    rng = np.random.default_rng(0)
    x, v, z = (rng.standard_normal(SHAPE) for _ in range(3))
    a_prev = ours.alphas_cumprod[ours.previous_timestep(999, 8)]
    x0 = -v  # v = sqrt(abar) eps - sqrt(1 - abar) x0 with abar = 0
    expected = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * z
    got = ours.step(v, 999, x, 8, eta=1.0, noise=z)
    assert np.max(np.abs(got - expected)) <= SCHEDULER_ATOL


def test_trained_betas():
    betas = np.linspace(1e-4, 0.03, 1000) ** 1.5
    # Given betas, beta_schedule is not read (diffusers accepts any value there too).
    config = {"trained_betas": betas, "prediction_type": "v_prediction", "beta_schedule": "x"}
    ours, ref = DDIMScheduler(**config), reference(**config)
    np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
    for steps, eta in itertools.product((1, 8, 50), ETAS):
        err, t, _ = compare_run(ours, ref, steps, eta)
        assert err <= SCHEDULER_ATOL, f"steps={steps} eta={eta}: {err:.3g} at t={t}"


def test_from_config_of_a_pndm_scheduler():
    pndm = diffusers.PNDMScheduler(**SD15_PNDM_CONFIG)
    config = json.loads(pndm.to_json_string())  # what scheduler_config.json holds
    assert "skip_prk_steps" in config and "_class_name" in config
    ours = DDIMScheduler.from_config(config)
    assert DDIMScheduler.from_config(dict(pndm.config)).steps_offset == 1
    ref = diffusers.DDIMScheduler.from_config(config)
    for key in ("beta_schedule", "steps_offset", "set_alpha_to_one", "prediction_type"):
        assert getattr(ours, key) == ref.config[key], key
    ref = in_float64(ref)
    for steps, eta in itertools.product((1, 25, 50), ETAS):
        err, t, same_timesteps = compare_run(ours, ref, steps, eta)
        assert same_timesteps, f"steps={steps}"
        assert err <= SCHEDULER_ATOL, f"steps={steps} eta={eta}: {err:.3g} at t={t}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_add_noise_matches_diffusers(dtype):
    config = schedule_config("scaled_linear")
    ours, ref = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal(SHAPE).astype(dtype)
    noise = rng.standard_normal(SHAPE).astype(dtype)
    for timestep in (0, 1, 500, 999, np.array([10, 990])):
        mine = ours.add_noise(x0, noise, timestep)
        ts = torch.tensor(np.broadcast_to(timestep, (SHAPE[0],)).copy())
        theirs = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), ts).numpy()
        assert mine.dtype == dtype
        err = float(np.max(np.abs(mine.astype(np.float64) - theirs)))
        assert err <= SCHEDULER_ATOL, f"t={timestep}: {err:.3g}"


def test_float32_stays_float32_and_follows_diffusers_float32_arithmetic():
    config = schedule_config("scaled_linear", steps_offset=1, set_alpha_to_one=False)
    ours, ref = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)  # float32 table
    ref.set_timesteps(50)
    abar = ref.alphas_cumprod.double().numpy()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32))
    noise = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    identical_steps = 0
    for t in ref.timesteps.numpy():
        out = fake_model(x.numpy().astype(np.float64), int(t), abar, "epsilon").astype(np.float32)
        mine = ours.step(out, t, x.numpy(), 50, eta=1.0, noise=noise)
        assert mine.dtype == np.float32
        x = ref.step(
            torch.from_numpy(out), int(t), x, eta=1.0, variance_noise=torch.from_numpy(noise)
        ).prev_sample
        # Same float32 operations in the same order; only torch's float32 sqrt, which is not
        # always correctly rounded, can make a coefficient (and so the step) differ.
        identical_steps += bool(np.array_equal(mine, x.numpy()))
    assert identical_steps > 0, "no step bit-identical to diffusers float32"
    assert ours.add_noise(x.numpy(), noise, 10).dtype == np.float32


def test_step_is_pure():
    ours = DDIMScheduler(prediction_type="v_prediction", thresholding=True)
    rng = np.random.default_rng(0)
    x, out, z = (rng.standard_normal(SHAPE) for _ in range(3))
    copies = [a.copy() for a in (x, out, z)]
    first = ours.step(out, 500, x, 10, eta=0.5, noise=z)
    second = ours.step(out, 500, x, 10, eta=0.5, noise=z)
    np.testing.assert_array_equal(first, second)
    for before, after in zip(copies, (x, out, z), strict=True):
        np.testing.assert_array_equal(before, after)
    assert ours.init_noise_sigma == 1.0


@pytest.mark.parametrize(
    ("make", "bad"),
    [
        (lambda: DDIMScheduler(beta_schedule="cosine"), "'cosine'"),
        (lambda: DDIMScheduler(prediction_type="x0"), "'x0'"),
        (lambda: DDIMScheduler(timestep_spacing="uniform"), "'uniform'"),
        (lambda: DDIMScheduler(trained_betas=[0.1] * 10), "(10,)"),
        (lambda: DDIMScheduler().timesteps(0), "num_inference_steps=0"),
        (lambda: DDIMScheduler().timesteps(1001), "num_inference_steps=1001"),
        (lambda: DDIMScheduler().timesteps(2.5), "num_inference_steps=2.5"),
        (lambda: DDIMScheduler().step(np.ones(3), 1000, np.ones(3), 10), "timestep 1000"),
        (lambda: DDIMScheduler().step(np.ones(3), 10, np.ones(3), 10, eta=0.5), "eta=0.5"),
        (lambda: DDIMScheduler().step(np.ones(3), 10, np.ones(3), 10, eta=2.0), "2.0"),
        (lambda: DDIMScheduler().step(np.ones(2), 10, np.ones(3), 10), "(2,)"),
        (lambda: DDIMScheduler().add_noise(np.ones(3), np.ones(3), 1000), "1000"),
    ],
)
def test_invalid_values_raise_input_error_naming_them(make, bad):
    with pytest.raises(InputError) as info:
        make()
    assert bad in str(info.value)
