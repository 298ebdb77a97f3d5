"""Distillation: guidance and progressive students learn their targets, resume after a kill to
the same weights, export, and run in the runtime as diffusers runs them (one pass, batch N)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="distillation needs the [train] extra")

from edgediff.bundle.reader import Bundle  # noqa: E402
from edgediff.errors import ExportError, InputError  # noqa: E402
from edgediff.models.distill.grid import DdimGrid  # noqa: E402
from edgediff.models.distill.math import (  # noqa: E402
    ddim_step,
    guidance_embedding,
    guided_eps,
    progressive_target,
    x0_from_eps,
)
from edgediff.models.distill.recipes import DistillRecipe  # noqa: E402
from edgediff.models.distill.run import distill, parse_guidance_range, parse_steps  # noqa: E402
from edgediff.models.distill.students import guidance_student, predict  # noqa: E402

STEPS = (2, 1)  # conftest's `distilled`: the guidance student at 2 steps, one round to 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pipe(path: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.float().eval().requires_grad_(False)
    return pipe


def _losses(run: Path, stage: str) -> list[float]:
    return torch.load(run / "state" / stage / "done.pt", weights_only=False)["losses"]


def _encode(pipe, captions: list[str]) -> torch.Tensor:
    from edgediff.models.distill.data import text_encoder_of

    return text_encoder_of(pipe)(captions)


def _probe(pipe, t: list[int], seed: int = 7):
    """A fixed batch the trainers never saw: noisy latents, timesteps, prompts, scales."""
    g = torch.Generator().manual_seed(seed)
    n, size = len(t), pipe.unet.config.sample_size
    z = torch.randn((n, pipe.unet.config.in_channels, size, size), generator=g)
    w = 1.0 + 7.0 * torch.rand(n, generator=g)
    captions = ["a big red circle on the left", "a small blue star at the top"] * (n // 2)
    return z, torch.tensor(t), _encode(pipe, captions), w


def test_each_distillation_loss_falls(distilled):
    run = distilled[STEPS[0]].parent
    for stage in ("guidance", f"steps-{STEPS[1]}", "tiny-decoder"):
        losses = _losses(run, stage)
        first, last = np.mean(losses[:8]), np.mean(losses[-8:])
        assert last < first, (stage, first, last)


def test_guidance_student_matches_the_guided_teacher_better_after_training(checkpoints, distilled):
    teacher = _pipe(checkpoints["tiny"])
    grid = DdimGrid.from_config(dict(teacher.scheduler.config))
    z, t, cond, w = _probe(teacher, grid.timesteps(STEPS[0]) * 4)
    uncond = _encode(teacher, [""] * len(t))
    with torch.no_grad():
        both = teacher.unet(torch.cat([z, z]), torch.cat([t, t]), torch.cat([uncond, cond]))
        target = guided_eps(*both.sample.chunk(2), w)
        before = guidance_student(teacher.unet).eval()
        after = _pipe(distilled[STEPS[0]]).unet
        error_before = torch.mean((predict(before, z, t, cond, w) - target) ** 2)
        error_after = torch.mean((predict(after, z, t, cond, w) - target) ** 2)
    assert error_after < error_before, (float(error_before), float(error_after))


def test_progressive_student_does_in_one_step_what_its_teacher_does_in_two(distilled):
    teacher_pipe, student = _pipe(distilled[STEPS[0]]), _pipe(distilled[STEPS[1]]).unet
    teacher = teacher_pipe.unet
    grid = DdimGrid.from_config(dict(teacher_pipe.scheduler.config))
    n = STEPS[1]
    z, t, cond, w = _probe(teacher_pipe, grid.timesteps(n) * 8)
    t_mid, t_end = grid.previous(t, 2 * n), grid.previous(t, n)
    a_t, a_mid, a_end = grid.alpha_bar(t), grid.alpha_bar(t_mid), grid.alpha_bar(t_end)
    with torch.no_grad():
        z_mid = ddim_step(z, predict(teacher, z, t, cond, w), a_t, a_mid)
        z_end = ddim_step(z_mid, predict(teacher, z_mid, t_mid, cond, w), a_mid, a_end)
        target = progressive_target(z, z_end, a_t, a_end)
        error = {
            name: torch.mean((x0_from_eps(z, predict(unet, z, t, cond, w), a_t) - target) ** 2)
            for name, unet in (("before", teacher), ("after", student))
        }
    assert error["after"] < error["before"], error


def test_targets_are_exact_for_a_ddim_step():
    # The progressive target is the x that one DDIM step maps onto z_end: check it round-trips.
    g = torch.Generator().manual_seed(0)
    z_t, z_end = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    a_t, a_end = torch.tensor([0.05, 0.3, 0.6]), torch.tensor([0.5, 0.7, 0.9991])
    x = progressive_target(z_t, z_end, a_t, a_end)
    eps = (z_t - a_t.sqrt().view(-1, 1, 1, 1) * x) / (1 - a_t).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(ddim_step(z_t, eps, a_t, a_end), z_end, rtol=1e-4, atol=1e-5)


def test_guidance_embedding_is_diffusers_lcm_embedding_of_w_minus_one():
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([1.0, 3.0, 7.5])
    theirs = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w - 1, 32)
    torch.testing.assert_close(guidance_embedding(w, 32), theirs)


_RUN = """
import sys, torch
torch.set_num_threads(1)
from edgediff.models.distill.recipes import DistillRecipe
from edgediff.models.distill.run import distill
recipe = DistillRecipe("micro", "test", guidance_steps=12, round_steps=6, batch_size=4,
                       warmup=2, ema_decay=0.9, checkpoint_every=3, tiny_steps=3, tiny_width=8,
                       tiny_pool=8)
distill(sys.argv[1], sys.argv[2], pool_guidance=3.0, recipe=recipe, steps=(2, 1), progress=False)
"""


_WEIGHTS = (
    "steps-1/unet/diffusion_pytorch_model.safetensors",
    "tiny-decoder/diffusion_pytorch_model.safetensors",
)


@pytest.fixture(scope="module")
def one_process_run(checkpoints, tmp_path_factory) -> Path:
    """OUT of the micro run in one uninterrupted process."""
    out = tmp_path_factory.mktemp("one-process") / "out"
    subprocess.run([sys.executable, "-c", _RUN, str(checkpoints["tiny"]), str(out)], check=True)
    return out


def _same_weights(ref: Path, got: Path, exact: bool) -> None:
    from safetensors.torch import load_file

    for weights in _WEIGHTS:
        expected, found = load_file(ref / weights), load_file(got / weights)
        assert expected.keys() == found.keys()
        for key in expected:
            if exact:
                assert torch.equal(expected[key], found[key]), key
            else:
                torch.testing.assert_close(found[key], expected[key], rtol=0, atol=1e-5)


def test_a_killed_distillation_resumes_to_the_same_weights(checkpoints, one_process_run, tmp_path):
    ckpt = str(checkpoints["tiny"])
    work = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _RUN, ckpt, str(work)])
    state = work / "state" / "guidance" / "state.pt"
    deadline = time.monotonic() + 180
    while not state.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = subprocess.run(
        [sys.executable, "-c", _RUN, ckpt, str(work)], check=True, capture_output=True, text=True
    )
    assert "guidance: resuming at step" in out.stdout
    _same_weights(one_process_run, work, exact=True)


def test_two_processes_under_accelerate_launch_train_the_one_process_weights(
    checkpoints, one_process_run, tmp_path
):
    # Each process trains on half of every batch and gradients are averaged, so the run makes
    # the one-process updates up to float summation order.
    script = tmp_path / "run.py"
    script.write_text(_RUN)
    launcher = Path(sys.executable).parent / "accelerate"
    work = tmp_path / "two"
    out = subprocess.run(
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         str(script), str(checkpoints["tiny"]), str(work)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 process(es) on cpu" in out.stdout
    _same_weights(one_process_run, work, exact=False)


def test_bad_options_are_refused_in_one_line(checkpoints, tmp_path):
    with pytest.raises(InputError, match="each round halves the steps"):
        parse_steps("8,3")
    with pytest.raises(InputError, match="must list integers"):
        parse_steps("8,x")
    with pytest.raises(InputError, match="LOW:HIGH"):
        parse_guidance_range("3")
    with pytest.raises(InputError, match="0 <= LOW <= HIGH"):
        parse_guidance_range("8:1")
    with pytest.raises(InputError, match="Pass --prompts"):
        distill(checkpoints["tiny"], tmp_path / "x", pool_guidance=3.0, data="teacher")
    recipe = DistillRecipe(
        "micro", "test", guidance_steps=1, round_steps=1, batch_size=2, tiny_steps=0
    )
    distill(
        checkpoints["tiny"], tmp_path / "run", pool_guidance=3.0, recipe=recipe, steps=(2, 1),
        progress=False,
    )  # fmt: skip
    with pytest.raises(InputError, match="holds a distillation run with other seed"):
        distill(
            checkpoints["tiny"], tmp_path / "run", pool_guidance=3.0, recipe=recipe,
            steps=(2, 1), seed=5, progress=False,
        )  # fmt: skip
    with pytest.raises(InputError, match="with other recipe_settings"):
        distill(
            checkpoints["tiny"], tmp_path / "run", pool_guidance=3.0, steps=(2, 1),
            recipe=DistillRecipe("micro", "test", guidance_steps=1, round_steps=1, batch_size=3),
            progress=False,
        )  # fmt: skip


def test_retuning_the_tiny_decoder_keeps_the_finished_students(checkpoints, tmp_path):
    def recipe(width: int) -> DistillRecipe:
        return DistillRecipe(
            "micro", "test", guidance_steps=1, round_steps=1, batch_size=2, tiny_steps=2,
            tiny_width=width, tiny_blocks=1, tiny_pool=4,
        )  # fmt: skip

    def run(width: int) -> None:
        distill(
            checkpoints["tiny"], tmp_path, pool_guidance=3.0, recipe=recipe(width), steps=(2, 1),
            progress=False,
        )  # fmt: skip

    run(8)
    guidance = tmp_path / "state" / "guidance" / "done.pt"
    trained = guidance.stat().st_mtime_ns
    with pytest.raises(InputError, match=r"tiny decoder trained with other tiny_width.*Delete"):
        run(4)
    shutil.rmtree(tmp_path / "state" / "tiny-decoder")
    run(4)
    assert guidance.stat().st_mtime_ns == trained
    config = json.loads((tmp_path / "tiny-decoder" / "config.json").read_text())
    assert set(config["decoder_block_out_channels"]) == {4}


def test_teacher_data_distils_from_the_teachers_own_samples(checkpoints, tmp_path):
    recipe = DistillRecipe(
        "micro", "test", guidance_steps=4, round_steps=2, batch_size=4, teacher_pool=6,
        teacher_pool_steps=2, tiny_steps=0,
    )  # fmt: skip
    out = distill(
        checkpoints["tiny"], tmp_path, pool_guidance=3.0, recipe=recipe, steps=(2, 1),
        data="teacher", prompts=["a red circle", "a blue square"], progress=False,
    )  # fmt: skip
    pool = torch.load(tmp_path / "state" / "teacher-samples.pt", weights_only=True)
    assert pool.shape[0] == 6 and torch.isfinite(pool).all()
    assert (out[1] / "distillation.json").read_text().count('"data": "teacher"') == 1


# ------------------------------------------------------------------ export and runtime


def test_export_records_what_each_student_was_distilled_for(student_bundle):
    bundle = Bundle.open(student_bundle)
    assert (bundle.manifest.recommended_steps, bundle.manifest.recommended_guidance) == (1, 5.0)
    assert bundle.model("unet").distillation is None  # the teacher
    assert "guidance" not in [s.name for s in bundle.model("unet").inputs]
    for component, method, steps in (
        ("unet.steps-2", "guidance", 2),
        ("unet.steps-1", "progressive", 1),
    ):
        entry = bundle.model(component)
        assert [s.name for s in entry.inputs] == [
            "sample", "timestep", "encoder_hidden_states", "guidance",
        ]  # fmt: skip
        record = entry.distillation
        assert record is not None and (record.method, record.steps) == (method, (steps,))
        assert record.guidance_embedded and record.guidance_range == (1.0, 8.0)
    assert bundle.manifest.scheduler["timestep_spacing"] == "trailing"


def test_export_keeps_only_the_students_asked_for(
    checkpoints, distilled, tmp_path, caplog, monkeypatch
):
    from click.testing import CliRunner

    from edgediff.cli import cli

    run, teacher = distilled[STEPS[0]].parent, str(checkpoints["tiny"])
    root = tmp_path / "bundle"
    bad = CliRunner().invoke(cli, ["export", str(run), str(root), "--students", "4,1"])
    assert bad.exit_code != 0 and "no student for 4 steps" in bad.output
    assert "The run has students for 2,1" in bad.output and not root.exists()
    # Which U-Nets a bundle gets is the point here; checking each against PyTorch is tested
    # with the student bundle, so these exports skip it (it was most of this test's ~100 s).
    args = ["export", str(run), str(root), "--teacher", teacher, "--students", "1", "--no-verify"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    unets = sorted(c for c in Bundle.open(root).manifest.components if c.startswith("unet"))
    assert unets == ["unet", "unet.steps-1"]
    # Without a teacher, the one student is the U-Net for every step count, and says so.
    alone = tmp_path / "alone"
    args = ["export", str(run), str(alone), "--students", "1", "--no-verify"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert [c for c in Bundle.open(alone).manifest.components if c.startswith("unet")] == ["unet"]
    from edgediff.runtime import Pipeline

    monkeypatch.setattr(logging.getLogger("edgediff"), "propagate", True)  # the CLI turned it off
    with Pipeline.load(alone) as pipe, caplog.at_level(logging.WARNING, logger="edgediff"):
        caplog.clear()
        pipe("a red circle", seed=0, output_type="np")
        assert "off the grid" not in caplog.text  # 1 step: what it learnt
        pipe("a red circle", num_inference_steps=3, seed=0, output_type="np")
    assert "3 steps run a U-Net distilled for 1 steps off the grid" in caplog.text


def test_runtime_picks_the_unet_distilled_for_the_steps_asked(student_bundle):
    from edgediff.runtime import Pipeline

    with Pipeline.load(student_bundle) as pipe:
        assert pipe.default_steps == 1  # the bundle's recommendation
        assert (pipe.unet_for(1), pipe.unet_for(2), pipe.unet_for(3)) == (
            "unet.steps-1", "unet.steps-2", "unet",
        )  # fmt: skip
        # The recommended count's U-Net loads with the pipeline, the others on first use.
        assert "unet.steps-1" in pipe.sessions and "unet" not in pipe.sessions
        pipe("a red circle", seed=0, num_inference_steps=2, output_type="np")
        assert "unet.steps-2" in pipe.sessions and "unet" not in pipe.sessions
        # Step counts no student was made for run the teacher, with CFG and negative prompts.
        images = pipe("a red circle", negative_prompt="blue", num_inference_steps=3, seed=0)
        assert "unet" in pipe.sessions and not pipe.guidance_embedded_for(3) and len(images) == 1
        assert pipe.last_timings.components.keys() == {"text_encoder", "unet", "vae_decoder"}


def test_the_bundles_recommended_guidance_is_every_front_ends_default(student_bundle, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from edgediff.cli import cli
    from edgediff.runtime import Pipeline
    from edgediff.runtime.images import read_png_parameters, to_uint8

    with Pipeline.load(student_bundle) as pipe:
        assert pipe.default_guidance == 5.0  # export --recommended-guidance 5
        unset = pipe("a red circle", seed=4, output_type="np")
        for scale, same in ((5.0, True), (3.0, False)):
            given = pipe("a red circle", guidance_scale=scale, seed=4, output_type="np")
            assert np.array_equal(unset, given) == same
    out = tmp_path / "x.png"
    args = ["generate", "a red circle", "--bundle", str(student_bundle), "--seed", "4"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_png_parameters(out)["guidance"] == 5.0
    with Image.open(out) as image:
        assert np.array_equal(np.asarray(image), to_uint8(unset)[0])
    result = CliRunner().invoke(
        cli, ["eval", str(student_bundle), "--prompts", "2", "--held-out", "0", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["settings"]["guidance"] == 5.0
    info = CliRunner().invoke(cli, ["info", str(student_bundle), "--no-verify"])
    assert "recommended guidance" in info.output and "5" in info.output


def test_a_kept_teacher_guides_at_the_runtimes_default_not_the_students_scale(student_bundle):
    from edgediff.runtime import Pipeline
    from edgediff.runtime.request import DEFAULT_GUIDANCE

    with Pipeline.load(student_bundle) as pipe:
        assert pipe.unet_for(8) == "unet" and not pipe.guidance_embedded_for(8)
        assert pipe.guidance_for(8) == DEFAULT_GUIDANCE != 5.0  # the CFG teacher
        assert pipe.guidance_for(STEPS[1]) == pipe.guidance_for(None) == 5.0  # the students
        unset = pipe("a red circle", num_inference_steps=8, seed=4, output_type="np")
        given = pipe(
            "a red circle", num_inference_steps=8, guidance_scale=DEFAULT_GUIDANCE, seed=4,
            output_type="np",
        )  # fmt: skip
        assert np.array_equal(unset, given)


@pytest.mark.parametrize("value", ["nan", "-1", "101"])
def test_export_refuses_a_recommended_guidance_out_of_range(distilled, tmp_path, value):
    from click.testing import CliRunner

    from edgediff.cli import cli

    run = next(iter(distilled.values())).parent
    args = ["export", str(run), str(tmp_path / "b"), "--recommended-guidance", value]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "recommended guidance must be a number from 0 to 100" in (
        result.output
    )
    assert not (tmp_path / "b").exists()


def test_runtime_equals_diffusers_forward_of_the_student(student_bundle, distilled):
    from diffusers import DDIMScheduler, LatentConsistencyModelPipeline

    from edgediff.runtime import Pipeline

    pipe = _pipe(distilled[1])
    prompts, w = ["a big red circle on the left", "a small blue star"], 3.0
    size = pipe.unet.config.sample_size
    latents = np.random.default_rng(0).standard_normal((2, 4, size, size), dtype=np.float32)
    with Pipeline.load(student_bundle) as runtime:
        assert runtime.guidance_embedded
        ours = runtime(
            prompts, num_inference_steps=1, guidance_scale=w, latents=latents, output_type="latent"
        )
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(1)
    cond = _encode(pipe, prompts)
    embedding = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
        None, torch.full((2,), w - 1), pipe.unet.config.time_cond_proj_dim
    )
    x = torch.from_numpy(latents) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = pipe.unet(x, t, cond, timestep_cond=embedding).sample
            x = scheduler.step(eps, t, x).prev_sample
    np.testing.assert_allclose(ours, x.numpy(), atol=1e-3, rtol=1e-3)


def test_runtime_runs_a_guidance_embedded_unet_once_on_batch_n(student_bundle):
    from edgediff.runtime import Pipeline

    with Pipeline.load(student_bundle) as pipe:
        batches, feeds_seen = [], []
        unet = pipe.models.unet

        def noting(**feeds):
            batches.append(feeds["sample"].shape[0])
            feeds_seen.append(feeds["guidance"].tolist())
            return unet(**feeds)

        models = dataclasses.replace(pipe.models, unet=noting)
        pipe(["a", "b"], num_inference_steps=2, guidance_scale=4.0, seed=0, models=models)
        assert batches == [2, 2] and feeds_seen == [[4.0, 4.0], [4.0, 4.0]]
        with pytest.raises(InputError, match="guidance-distilled without negative prompts"):
            pipe("a", negative_prompt="blurry", num_inference_steps=1)


def test_export_refuses_a_guidance_unet_without_its_record(distilled, tmp_path):
    import shutil

    from edgediff.export import export_checkpoint

    bare = tmp_path / "bare"
    shutil.copytree(distilled[1], bare)
    (bare / "distillation.json").unlink()
    with pytest.raises(ExportError, match=r"no distillation\.json"):
        export_checkpoint(bare, tmp_path / "bundle", progress=False)


def test_engines_plan_every_unet_with_the_images_batch(student_bundle):
    from edgediff.bundle.engine_compat import Platform
    from edgediff.bundle.flavours import Toolkit
    from edgediff.engines.plan import BuildRequest, plan_engines
    from edgediff.engines.profiles import Span

    orin = Platform(Toolkit("tensorrt", "10.3.0"), "Orin", "8.7")
    request = BuildRequest(batch=Span(1, 2, 4))
    plans = {p.component: p for p in plan_engines(Bundle.open(student_bundle), request, orin)}
    assert set(plans) == {
        "text_encoder", "unet", "unet.steps-2", "unet.steps-1", "vae_decoder", "vae_decoder.tiny",
        "vae_encoder",
    }  # fmt: skip
    low, opt, high = plans["unet"].profile["sample"]  # the teacher runs [uncond; cond]
    assert (low[0], opt[0], high[0]) == (1, 4, 8)
    for name in ("unet.steps-2", "unet.steps-1"):
        low, opt, high = plans[name].profile["sample"]
        assert (low[0], opt[0], high[0]) == (1, 2, 4)  # one pass on N, not [uncond; cond]
        assert plans[name].profile["guidance"] == ((1,), (2,), (4,))


def test_tiny_decoder_runs_in_the_runtime_as_diffusers_runs_it(student_bundle, distilled):
    from diffusers import AutoencoderTiny

    from edgediff.bundle.schema import TINY_DECODER
    from edgediff.runtime import Pipeline

    run = distilled[STEPS[0]].parent
    tiny = AutoencoderTiny.from_pretrained(str(run / "tiny-decoder")).eval()
    assert Bundle.open(student_bundle).model(TINY_DECODER).verification.passed
    with Pipeline.load(student_bundle, decoder="tiny") as pipe:
        assert pipe.decoder == TINY_DECODER
        latents = pipe("a red circle", seed=0, output_type="latent")
        ours = pipe.decode(latents)
        assert TINY_DECODER in pipe.sessions and "vae_decoder" not in pipe.sessions
    with torch.no_grad():
        # as diffusers' pipelines decode: latents / the decoder's factor
        assert tiny.config.scaling_factor != 1.0
        theirs = tiny.decode(torch.from_numpy(latents) / tiny.config.scaling_factor).sample
    expected = np.clip((theirs.numpy() + 1) / 2, 0, 1).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_eval_scores_with_the_tiny_decoder(student_bundle):
    from click.testing import CliRunner

    from edgediff.cli import cli

    args = ["eval", str(student_bundle), "--prompts", "2", "--held-out", "0", "--decoder", "tiny"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["settings"]["decoder"] == "tiny" and report["settings"]["steps"] == 1


def test_a_bundle_without_a_tiny_decoder_says_so(tiny_bundle):
    from edgediff.errors import BundleError
    from edgediff.runtime import Pipeline

    with pytest.raises(BundleError, match=r"no tiny decoder.*edgediff distill"):
        Pipeline.load(tiny_bundle, decoder="tiny")
    with pytest.raises(InputError, match="unknown decoder 'small'"):
        Pipeline.load(tiny_bundle, decoder="small")


def test_a_distilled_unet_calibrates_and_quantises_to_int8(student_bundle, tmp_path):
    import shutil

    pytest.importorskip("onnx", reason="quantising needs the [quant] extra")
    from edgediff.calibration.capture import calibrate
    from edgediff.calibration.quantize_bundle import quantize_bundle
    from edgediff.runtime import Pipeline

    root = tmp_path / "bundle"
    shutil.copytree(student_bundle, root)
    prompts = ["a big red circle on the left", "a small blue star at the top"]
    record = calibrate(root, prompts, samples=4, steps=1, batch_size=2, force=True)
    assert set(record.inputs) == {"text_encoder", "unet.steps-1", "vae_decoder"}
    assert "guidance" in record.inputs["unet.steps-1"]  # what the student is fed, w included
    with pytest.raises(Exception, match=r"no unet inputs \(it was recorded at 1 steps\)"):
        quantize_bundle(root, "int8", ["unet"], keep="none", probe_prompts=2, force=True)
    quantize_bundle(root, "int8", ["unet.steps-1"], keep="none", probe_prompts=2, force=True)
    entry = Bundle.open(root).model("unet.steps-1", "int8")
    assert entry.distillation is not None and entry.quantization is not None
    with Pipeline.load(root, precision="int8") as pipe:
        images = pipe(prompts, num_inference_steps=1, seed=0, output_type="np")
        assert np.isfinite(images).all()
        assert pipe.model_files["unet.steps-1"][0] == entry.file
    # Recording again at 2 steps replaces the 1-step recording: its files leave the bundle
    # (the INT8 model made from it stays), and the bundle still passes its hashes.
    old = {rel for rel in Bundle.open(root).manifest.files if "/unet.steps-1/" in rel}
    assert old and all(rel.startswith("calibration/") for rel in old)
    record = calibrate(root, prompts, samples=4, steps=2, batch_size=2, force=True)
    assert set(record.inputs) == {"text_encoder", "unet.steps-2", "vae_decoder"}
    after = Bundle.open(root)
    after.verify()
    assert not old & set(after.manifest.files) and not any((root / rel).exists() for rel in old)
    assert after.model("unet.steps-1", "int8").quantization is not None


def test_bench_defaults_to_the_students_counts_beside_the_teachers(student_bundle, tiny_bundle):
    from edgediff.bench.configs import default_decoders, default_steps

    students = Bundle.open(student_bundle)  # teacher as U-Net, students for 2 and 1 steps
    assert default_steps(students) == [1, 2, 4, 8]
    assert default_decoders(students) == ["full", "tiny"]
    plain = Bundle.open(tiny_bundle)
    assert (default_steps(plain), default_decoders(plain)) == ([2, 4, 8, 16], ["full"])


def test_bench_measures_decoders_and_step_counts_side_by_side(student_bundle, tmp_path):
    from edgediff.bench.configs import expand
    from edgediff.bench.run import BenchSettings, run_bench

    configs = expand(["ort-cpu"], ["fp32"], [1, 3], ["full", "tiny"])
    settings = BenchSettings(prompts=2, runs=1, warmup=0, batch_size=2)
    report = run_bench(student_bundle, configs, settings, tmp_path / "bench", progress=False)
    rows = {r["id"]: r for r in report["rows"]}
    assert set(rows) == {
        "ort-cpu/fp32/1", "ort-cpu/fp32/3", "ort-cpu/fp32/1/tiny", "ort-cpu/fp32/3/tiny",
    }  # fmt: skip
    # The tiny decoder is measured against the full one: same latents, other images.
    tiny = rows["ort-cpu/fp32/1/tiny"]["accuracy"]
    assert tiny["latent_psnr_db"] is None  # identical latents
    assert tiny["image_psnr_db"] is not None and tiny["image_ssim"] < 1.0
    # Each row says which U-Net ran: the 1-step student in one pass at the bundle's scale,
    # the teacher under CFG at the runtime's default.
    one = {"component": "unet.steps-1", "passes": 1, "guidance": 5.0}
    assert rows["ort-cpu/fp32/1"]["unet"] == one
    assert rows["ort-cpu/fp32/3"]["unet"] == {"component": "unet", "passes": 2, "guidance": 3.0}
    table = (tmp_path / "bench" / "report.md").read_text()
    assert "| `ort-cpu/fp32/1` | unet.steps-1, 1 pass, w 5 |" in table
    assert "| `ort-cpu/fp32/3` | unet, CFG 2 passes, w 3 |" in table
