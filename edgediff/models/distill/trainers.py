"""The two distillation stages as resumable training runs (the trainers' own step loop).

Guidance (Meng et al. 2023, stage one): the student takes w as an input and regresses the
teacher's guided prediction ε_u + w (ε_c − ε_u) for w drawn from the guidance range, so one pass
of batch N replaces the [uncond; cond] pass of batch 2N.

Progressive (Salimans & Ho 2022): a student of n steps learns, at each of its grid timesteps t,
the x̃ that takes z_t in one DDIM step to where two DDIM steps of its 2n-step teacher take it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from edgediff.models.distill.data import LatentStream, TextEncoder
from edgediff.models.distill.grid import DdimGrid
from edgediff.models.distill.math import (
    ddim_step,
    guided_eps,
    progressive_target,
    truncated_snr_weight,
    x0_from_eps,
)
from edgediff.models.distill.recipes import DistillRecipe
from edgediff.models.distill.students import GUIDANCE_PROJECTION, predict
from edgediff.models.training.loop import EMA, Stage, cosine_lr, optimizer_step, run_stage
from edgediff.models.training.parallel import SINGLE, Parallel

# A share of the guidance stage's timesteps is drawn from anywhere, so the student stays a
# denoiser between the grid points it will mostly be used at.
_OFF_GRID_SHARE = 0.25


def _fit(
    name: str,
    student,
    loss_of: Callable[[int], torch.Tensor],
    steps: int,
    recipe: DistillRecipe,
    work_dir: Path,
    seed: int,
    progress: bool,
    parallel: Parallel,
    new: tuple[str, ...] = (),
) -> list[float]:
    """Minimise loss_of(k) over the student's weights (the `new` ones, not the teacher's, at a
    higher rate); the student ends with its EMA weights."""
    student.train().requires_grad_(True)
    named = dict(student.named_parameters())
    groups = [
        {"params": [p for n, p in named.items() if n not in new], "scale": 1.0},
        {"params": [named[n] for n in new], "scale": recipe.new_layer_lr_scale},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=recipe.lr, weight_decay=0.0)
    ema = EMA(student, recipe.ema_decay)

    def step(k: int) -> float:
        for group in opt.param_groups:
            group["lr"] = recipe.lr * group["scale"] * cosine_lr(k, steps, recipe.warmup)
        return optimizer_step(opt, loss_of(k), student, ema, parallel)

    state = {"student": student, "opt": opt, "ema": ema}
    stage = Stage(name, steps, step, state, recipe.checkpoint_every)
    losses = run_stage(stage, work_dir, seed, progress, parallel)
    student.load_state_dict(ema.shadow)
    student.eval().requires_grad_(False)
    return losses


def _noised(x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a = alpha_bar.reshape(-1, 1, 1, 1).to(x0.device)
    return a.sqrt() * x0 + (1 - a).sqrt() * torch.randn_like(x0)


def _mine(parallel: Parallel, tensors: list[torch.Tensor], captions: list[str]):
    """This process's rows of the whole batch's draws, on its device."""
    rows = parallel.rows(len(captions))
    return [x[rows].to(parallel.device) for x in tensors], captions[rows]


def _guidance_scales(size: int, guidance_range: tuple[float, float]) -> torch.Tensor:
    low, high = guidance_range
    return low + (high - low) * torch.rand(size)


def train_guidance(
    teacher,
    student,
    encode: TextEncoder,
    stream: LatentStream,
    grid: DdimGrid,
    recipe: DistillRecipe,
    guidance_range: tuple[float, float],
    steps: int,
    work_dir: Path,
    seed: int,
    progress: bool = True,
    parallel: Parallel = SINGLE,
) -> list[float]:
    """Guidance distillation of `teacher` (a CFG U-Net) into `student`, mostly on the
    `steps`-step grid; returns the losses."""
    teacher.eval().requires_grad_(False)
    uncond = encode([""]).to(parallel.device)
    on_grid = torch.tensor(grid.timesteps(steps))

    def loss_of(k: int) -> torch.Tensor:
        x0, captions = stream(k, recipe.batch_size)
        n = len(captions)
        anywhere = torch.randint(0, grid.train_timesteps, (n,))
        t = torch.where(
            torch.rand(n) < _OFF_GRID_SHARE, anywhere, on_grid[torch.randint(len(on_grid), (n,))]
        )
        z = _noised(x0, grid.alpha_bar(t))
        w = _guidance_scales(n, guidance_range)
        (z, t, w), captions = _mine(parallel, [z, t, w], captions)
        cond = encode(captions).to(parallel.device)
        with torch.no_grad():
            both = teacher(
                torch.cat([z, z]), torch.cat([t, t]), torch.cat([uncond.expand_as(cond), cond])
            )
            target = guided_eps(*both.sample.chunk(2), w)
        return torch.nn.functional.mse_loss(predict(student, z, t, cond, w), target)

    return _fit(
        "guidance", student, loss_of, recipe.guidance_steps, recipe, work_dir, seed, progress,
        parallel, new=(GUIDANCE_PROJECTION,),
    )  # fmt: skip


def train_round(
    teacher,
    student,
    encode: TextEncoder,
    stream: LatentStream,
    grid: DdimGrid,
    recipe: DistillRecipe,
    guidance_range: tuple[float, float],
    steps: int,
    work_dir: Path,
    seed: int,
    progress: bool = True,
    parallel: Parallel = SINGLE,
) -> list[float]:
    """One progressive round: `student` learns in `steps` DDIM steps what the guidance-embedded
    `teacher` does in 2 × `steps`; returns the losses."""
    teacher.eval().requires_grad_(False)
    student_grid = torch.tensor(grid.timesteps(steps))

    def loss_of(k: int) -> torch.Tensor:
        x0, captions = stream(k, recipe.batch_size)
        n = len(captions)
        t = student_grid[torch.randint(len(student_grid), (n,))]
        t_mid, t_end = grid.previous(t, 2 * steps), grid.previous(t, steps)
        a_t, a_mid, a_end = grid.alpha_bar(t), grid.alpha_bar(t_mid), grid.alpha_bar(t_end)
        z = _noised(x0, a_t)
        w = _guidance_scales(n, guidance_range)
        (z, t, t_mid, w, a_t, a_mid, a_end), captions = _mine(
            parallel, [z, t, t_mid, w, a_t, a_mid, a_end], captions
        )
        cond = encode(captions).to(parallel.device)
        with torch.no_grad():
            z_mid = ddim_step(z, predict(teacher, z, t, cond, w), a_t, a_mid)
            z_end = ddim_step(z_mid, predict(teacher, z_mid, t_mid, cond, w), a_mid, a_end)
            target = progressive_target(z, z_end, a_t, a_end)
        x_hat = x0_from_eps(z, predict(student, z, t, cond, w), a_t)
        per_sample = (x_hat - target).pow(2).mean(dim=(1, 2, 3))
        return (truncated_snr_weight(a_t) * per_sample).mean()

    name = f"steps-{steps}"
    return _fit(
        name, student, loss_of, recipe.round_steps, recipe, work_dir, seed, progress, parallel
    )
