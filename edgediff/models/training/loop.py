"""The step loop every trainer shares: per-step seeding, resumable checkpoints, a progress bar.

A stage is deterministic for its seed and survives a kill: step k draws batch k of the data
stream and seeds torch's generator from (seed, k), and the checkpoint holds everything else
that changes (weights, optimiser, EMA, step). Resuming therefore gives the same weights as
never having stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from edgediff.bundle.files import atomic_path
from edgediff.models.training.parallel import SINGLE, Parallel

STATE_FILE = "state.pt"
DONE_FILE = "done.pt"


def step_seed(seed: int, step: int) -> int:
    """A torch seed for one step of one run, distinct across steps and seeds."""
    return (seed * 1_000_003 + step) % (2**63)


def cosine_lr(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of a module's parameters, with the usual warm-up of the decay."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """Move the average towards the module's current weights."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1 - decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        """Averaged weights and update count."""
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`."""
        self.shadow = state["shadow"]
        self.updates = state["updates"]


def optimizer_step(
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    module: torch.nn.Module,
    ema: EMA,
    parallel: Parallel = SINGLE,
) -> float:
    """One update: gradients of `loss` (averaged over the processes), clipped to norm 1, an
    optimiser step, the EMA; the loss's value (averaged too)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    parallel.average_gradients(module)
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    opt.step()
    ema.update(module)
    return parallel.average(loss.item())


@dataclass
class Stage:
    """What a trainer hands the loop: things to checkpoint and a function for one step."""

    name: str
    steps: int
    step: Callable[[int], float]  # runs step k, returns its loss
    state: dict[str, Any]  # objects with state_dict/load_state_dict, saved in checkpoints
    checkpoint_every: int = 200
    extra: dict[str, Any] = field(default_factory=dict)  # plain values saved alongside


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _snapshot(stage: Stage, step: int, losses: list[float]) -> dict[str, Any]:
    return {
        "step": step,
        "losses": losses,
        "extra": stage.extra,
        "state": {k: v.state_dict() for k, v in stage.state.items()},
    }


def run_stage(
    stage: Stage, work_dir: Path, seed: int, progress: bool = True, parallel: Parallel = SINGLE
) -> list[float]:
    """Run `stage` to its last step, resuming from `work_dir` if a checkpoint is there; losses.

    Of several processes (`parallel`), only the first writes checkpoints and shows progress."""
    work_dir.mkdir(parents=True, exist_ok=True)
    done, ckpt = work_dir / DONE_FILE, work_dir / STATE_FILE
    source = done if done.exists() else ckpt if ckpt.exists() else None
    start, losses = 0, []
    if source is not None:
        saved = torch.load(source, map_location=parallel.device, weights_only=False)
        for k, v in stage.state.items():
            v.load_state_dict(saved["state"][k])
        stage.extra.update(saved["extra"])
        start, losses = saved["step"], list(saved["losses"])
    if start >= stage.steps:
        return losses
    if start and parallel.is_main:
        print(f"{stage.name}: resuming at step {start} of {stage.steps}")
    bar = tqdm(
        total=stage.steps, initial=start, desc=stage.name, unit="step",
        disable=not (progress and parallel.is_main),
        smoothing=0.05, dynamic_ncols=True,
    )  # fmt: skip
    began, recent = time.perf_counter(), []
    for k in range(start, stage.steps):
        torch.manual_seed(step_seed(seed, k))
        loss = float(stage.step(k))
        if not math.isfinite(loss):
            raise FloatingPointError(f"{stage.name}: loss is {loss} at step {k}")
        losses.append(loss)
        recent = ([*recent, loss])[-50:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
        bar.update()
        if (k + 1) % stage.checkpoint_every == 0 and k + 1 < stage.steps and parallel.is_main:
            _save_atomic(_snapshot(stage, k + 1, losses), ckpt)
    bar.close()
    if parallel.is_main:
        _save_atomic(_snapshot(stage, stage.steps, losses), done)
        ckpt.unlink(missing_ok=True)
        rate = (stage.steps - start) / max(1e-9, time.perf_counter() - began)
        print(f"{stage.name}: {stage.steps} steps done ({rate:.2f} steps/s), last loss {loss:.4f}")
    parallel.barrier()
    return losses
