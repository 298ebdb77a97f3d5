"""The whole recipe: VAE, then CLIP, then U-Net, into a diffusers checkpoint folder.

Layout of `--out DIR`: DIR/state/<stage>/ holds each stage's resumable checkpoint and
DIR/checkpoint/ the finished StableDiffusionPipeline (safetensors), written only once every
stage is done. Re-running the same command after a kill resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgediff.bundle.files import atomic_write_text
from edgediff.errors import InputError
from edgediff.models.presets import build_random_pipeline, get_preset, save_pipeline
from edgediff.models.training.loop import DONE_FILE
from edgediff.models.training.recipes import Recipe, get_recipe

STAGES = ("vae", "clip", "unet")


def _check_run(state_dir: Path, recipe: Recipe, seed: int) -> None:
    """Refuse to resume a run that was started with another recipe or seed."""
    record = state_dir / "run.json"
    wanted = {"recipe": recipe.name, "seed": seed}
    if record.exists():
        found = json.loads(record.read_text())
        if found != wanted:
            raise InputError(
                f"'{state_dir.parent}' holds a run with {found}, not {wanted}",
                "Pass the same --preset and --seed to resume it, or choose another --out",
            )
    else:
        atomic_write_text(record, json.dumps(wanted))


def _require(state_dir: Path, stage: str, needs: tuple[str, ...]) -> None:
    for need in needs:
        if not (state_dir / need / DONE_FILE).exists():
            raise InputError(
                f"stage '{stage}' needs the '{need}' stage, which has not finished",
                f"Run `edgediff train {need}` with the same --out first (or `edgediff train`)",
            )


def train(
    out_dir: str | Path,
    recipe: str | Recipe = "shapes-64",
    seed: int = 0,
    stages: tuple[str, ...] = STAGES,
    progress: bool = True,
) -> Path | None:
    """Run `stages` of the recipe (resuming); return the checkpoint folder once all are done."""
    from edgediff.models.training.clip import retrieval_accuracy, train_clip
    from edgediff.models.training.unet import train_unet
    from edgediff.models.training.vae import reconstruction_psnr, train_vae

    r = get_recipe(recipe) if isinstance(recipe, str) else recipe
    out = Path(out_dir)
    state_dir = out / "state"
    final = out / "checkpoint"
    if (final / "model_index.json").exists():
        raise InputError(
            f"'{final}' already holds a trained checkpoint",
            "Export it with `edgediff export`, or choose another --out",
        )
    _check_run(state_dir, r, seed)
    arch = get_preset(r.preset)
    pipe = build_random_pipeline(arch, seed)
    began = time.perf_counter()
    print(f"recipe {r.name} (seed {seed}): estimated {r.estimated_seconds() / 60:.0f} min "
          f"on 2 CPU cores; state in {state_dir}")  # fmt: skip

    if "vae" in stages:
        train_vae(pipe.vae, r.vae, state_dir / "vae", seed, progress)
        psnr = reconstruction_psnr(pipe.vae, seed)
        print(f"vae: {psnr:.1f} dB PSNR on fresh images, scaling factor "
              f"{pipe.vae.config.scaling_factor}")  # fmt: skip
    if "clip" in stages:
        heads = train_clip(
            pipe.text_encoder, pipe.tokenizer, r.clip, state_dir / "clip", seed, progress
        )
        acc = retrieval_accuracy(pipe.text_encoder, pipe.tokenizer, heads, seed)
        print("clip: caption retrieval on fresh images: "
              + ", ".join(f"{k} {v:.0%}" for k, v in acc.items()))  # fmt: skip
    if "unet" in stages:
        _require(state_dir, "unet", ("vae", "clip"))
        # Later stages start from the finished earlier ones, whichever process trained them.
        for name, module in (("vae", pipe.vae), ("clip", pipe.text_encoder)):
            if name not in stages:
                _load_finished(state_dir / name, name, module)
        if "vae" not in stages:
            from edgediff.models.training.vae import measure_scaling_factor

            pipe.vae.register_to_config(scaling_factor=measure_scaling_factor(pipe.vae, seed))
        train_unet(
            pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer, dict(pipe.scheduler.config),
            r.unet, state_dir / "unet", seed, progress,
        )  # fmt: skip
    print(f"{', '.join(stages)}: {(time.perf_counter() - began) / 60:.1f} min")
    # The U-Net stage is last, so only a process that ran it holds every trained weight.
    if "unet" not in stages:
        return None
    return save_pipeline(pipe, final)


def _load_finished(stage_dir: Path, name: str, module) -> None:
    import torch

    saved = torch.load(stage_dir / DONE_FILE, weights_only=False)["state"]
    key = "vae" if name == "vae" else "text_encoder"
    module.load_state_dict(saved[key])
