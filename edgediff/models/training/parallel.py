"""Data parallelism for the trainers: one process per device under `accelerate launch` or torchrun.

Every process draws the whole batch's randomness from the same per-step seed (cheap: indices,
noise, guidance scales) and then trains on its own rows of it; gradients are averaged across
processes before the optimiser step. The update is therefore the one a single process would
make on the whole batch, up to the order of float additions, and every process holds the same
weights after every step; only the first one writes checkpoints, outputs and the progress bar.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from edgediff.errors import InputError


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Parallel:
    """This process's place among the training processes, and the device it trains on."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_environment(cls) -> Parallel:
        """One process on CUDA if torch has it, else the CPU; under `accelerate launch`
        (WORLD_SIZE > 1) the launcher's process group, gloo on CPUs and NCCL on GPUs."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(device=_default_device())
        from accelerate import PartialState

        # Without cpu=True accelerate does not set up a CPU process group from torchrun's
        # environment, and every process would believe it is rank 0 of 1.
        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, state.device)

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and draws the progress bar."""
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a batch of `batch_size`."""
        if batch_size % self.world:
            raise InputError(
                f"a batch of {batch_size} does not split over {self.world} processes",
                "Launch a number of processes that divides the recipe's batch size",
            )
        share = batch_size // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def average_gradients(self, module: torch.nn.Module) -> None:
        """Replace each gradient by its mean over the processes (one all-reduce)."""
        if self.world == 1:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def average(self, value: float) -> float:
        """The mean of a number over the processes (so all see the same loss)."""
        if self.world == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(total)
        return float(total.item()) / self.world

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world > 1:
            torch.distributed.barrier()


SINGLE = Parallel()  # one process on the CPU: the tested default
