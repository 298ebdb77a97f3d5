"""Students: U-Nets initialised from their teacher, and the one call that runs any of them."""

from __future__ import annotations

import copy

import torch

from edgediff.models.distill.math import guidance_embedding

# The guidance student's one new weight (the projection of w's embedding into the time
# embedding); everything else starts as the teacher's.
GUIDANCE_PROJECTION = "time_embedding.cond_proj.weight"


def guidance_dim(unet) -> int | None:
    """The width of a U-Net's guidance embedding, or None if guidance is not embedded."""
    return unet.config.get("time_cond_proj_dim")


def guidance_student(teacher):
    """A U-Net that also takes the guidance scale (diffusers' `time_cond_proj_dim`), equal to
    the teacher's conditional prediction at the start: the new projection starts at zero."""
    from diffusers import UNet2DConditionModel

    dim = teacher.config.block_out_channels[0]
    student = UNet2DConditionModel.from_config({**teacher.config, "time_cond_proj_dim": dim})
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or set(missing) != {GUIDANCE_PROJECTION}:
        raise ValueError(f"student does not fit its teacher: {missing} {unexpected}")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def copy_student(teacher):
    """The next round's student: a copy of its teacher, to be trained."""
    return copy.deepcopy(teacher)


def predict(
    unet, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """ε of a guidance-embedded U-Net at guidance w (one pass, batch N)."""
    embedding = guidance_embedding(w, guidance_dim(unet))
    return unet(z, t, cond, timestep_cond=embedding).sample
