"""`edgediff distill`: a teacher checkpoint in, one student checkpoint per step count out.

Layout of OUT: OUT/state/<stage>/ holds each stage's resumable checkpoint (and, with --data
teacher, the teacher's samples); OUT/steps-<n>/ is a diffusers checkpoint whose U-Net takes the
guidance scale and was distilled for n DDIM steps, with distillation.json saying so (`edgediff
export` copies it into the bundle's manifest). Re-running the same command after a kill resumes
where it stopped and gives the same weights.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path

from edgediff.bundle.files import atomic_write_text, sha256_file
from edgediff.bundle.schema import DISTILLATION_FILE, DistillationRecord
from edgediff.errors import InputError
from edgediff.models.distill.recipes import DistillRecipe, get_recipe

DATA_SOURCES = ("shapes", "teacher")
TINY_DECODER_FOLDER = "tiny-decoder"  # OUT/tiny-decoder: a diffusers AutoencoderTiny
_DATA_SEED_OFFSET = 30_000  # other shapes samples than the teacher trained on


def parse_steps(text: str) -> tuple[int, ...]:
    """'8,4,2,1' -> (8, 4, 2, 1): the guidance student's steps, then each round halving them."""
    try:
        steps = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--steps '{text}' must list integers", "e.g. --steps 8,4,2,1") from None
    if not steps or steps[0] < 1:
        raise InputError(f"--steps '{text}' must start with a positive step count", "e.g. 8,4,2,1")
    for more, fewer in itertools.pairwise(steps):
        if more != 2 * fewer:
            raise InputError(
                f"--steps '{text}': each round halves the steps, so {fewer} cannot follow {more}",
                "List halvings, e.g. --steps 8,4,2,1",
            )
    return steps


def parse_guidance_range(text: str) -> tuple[float, float]:
    """'1:8' -> (1.0, 8.0), the guidance scales the student learns."""
    try:
        low, high = (float(part) for part in text.split(":"))
    except ValueError:
        raise InputError(
            f"--guidance-range '{text}' is not LOW:HIGH", "e.g. --guidance-range 1:8"
        ) from None
    if not 0.0 <= low <= high <= 100.0:
        raise InputError(
            f"--guidance-range '{text}' must satisfy 0 <= LOW <= HIGH <= 100",
            "e.g. --guidance-range 1:8",
        )
    return low, high


def teacher_sha256(checkpoint: Path) -> str:
    """sha256 of the teacher U-Net's weight files, so a student names what it was made from."""
    digest = hashlib.sha256()
    for path in sorted((checkpoint / "unet").glob("*.safetensors")):
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _check_record(record: Path, wanted: dict, holds: str, fix: str) -> None:
    """Write `wanted` to `record`, or refuse if an earlier run wrote other values there."""
    if record.exists():
        found = json.loads(record.read_text())
        if found != wanted:
            changed = sorted(k for k in wanted if found.get(k) != wanted[k])
            raise InputError(f"{holds} with other {', '.join(changed)}", fix)
    else:
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(wanted, indent=2))


def _check_run(state: Path, wanted: dict) -> None:
    _check_record(
        state / "run.json", wanted, f"'{state.parent}' holds a distillation run",
        "Pass the same options to resume it, or choose another OUT folder",
    )  # fmt: skip


def _check_tiny_stage(stage: Path, wanted: dict) -> None:
    """The tiny decoder's own settings: changing them keeps the finished U-Net stages."""
    _check_record(
        stage / "settings.json", wanted, f"'{stage}' holds a tiny decoder trained",
        f"Delete '{stage}' to train it again with these (the U-Net students are kept)",
    )  # fmt: skip


def _load_teacher(checkpoint: Path):
    from diffusers import StableDiffusionPipeline

    if not (checkpoint / "model_index.json").is_file():
        raise InputError(
            f"'{checkpoint}' is not a diffusers checkpoint (no model_index.json)",
            "Pass the folder `edgediff train` or save_pretrained wrote",
        )
    pipe = StableDiffusionPipeline.from_pretrained(
        str(checkpoint), safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.float().eval().requires_grad_(False)
    return pipe


def distill(
    checkpoint: str | Path,
    out: str | Path,
    *,
    pool_guidance: float,
    recipe: str | DistillRecipe = "shapes",
    guidance_range: tuple[float, float] = (1.0, 8.0),
    steps: tuple[int, ...] = (8, 4, 2, 1),
    data: str = "shapes",
    prompts: list[str] | None = None,
    seed: int = 0,
    tiny_decoder: bool = True,
    progress: bool = True,
) -> dict[int, Path]:
    """Distil the checkpoint's U-Net: guidance first, then one progressive round per halving;
    then (`tiny_decoder`) a tiny VAE decoder into OUT/tiny-decoder.

    `pool_guidance` is the scale the teacher samples --data teacher with. Returns step count ->
    student checkpoint folder.
    """
    from diffusers import DDIMScheduler

    from edgediff.models.distill import data as sources
    from edgediff.models.distill.grid import DdimGrid
    from edgediff.models.distill.students import copy_student, guidance_student
    from edgediff.models.distill.trainers import train_guidance, train_round
    from edgediff.models.training.parallel import Parallel

    r = get_recipe(recipe) if isinstance(recipe, str) else recipe
    checkpoint, out = Path(checkpoint), Path(out)
    if data not in DATA_SOURCES:
        raise InputError(f"unknown --data '{data}'", f"Use one of: {', '.join(DATA_SOURCES)}")
    if data == "teacher" and not prompts:
        raise InputError("--data teacher samples the teacher on prompts", "Pass --prompts FILE")
    parallel = Parallel.from_environment()
    pipe = _load_teacher(checkpoint).to(parallel.device)
    teacher_hash = teacher_sha256(checkpoint)
    state = out / "state"
    wanted = {
        "recipe": r.name,
        "recipe_settings": r.settings(),
        "seed": seed,
        "steps": list(steps),
        "guidance_range": list(guidance_range),
        "data": data,
        "teacher_unet_sha256": teacher_hash,
        "prompts_sha256": hashlib.sha256("\n".join(prompts or []).encode()).hexdigest(),
    }
    _check_run(state, wanted)
    minutes = r.estimated_seconds(len(steps) - 1) / 60
    if parallel.is_main:
        print(
            f"distill preset {r.name} (seed {seed}), {parallel.world} process(es) on "
            f"{parallel.device}: about {minutes:.0f} min on 2 CPU cores; state in {state}"
        )
    began = time.perf_counter()
    # Halving rounds need nested grids that end at the final ᾱ: "trailing" spacing has them
    # (999, 499 | 999 for 2 | 1 steps), "leading" does not (501, 1 | 1). Students are saved with
    # it, so the runtime samples them on the grid they learnt.
    grid = DdimGrid.from_config({**pipe.scheduler.config, "timestep_spacing": "trailing"})
    pipe.scheduler = DDIMScheduler.from_config(grid.config)
    encode = sources.text_encoder_of(pipe)
    if data == "shapes":
        stream = sources.shapes_stream(pipe.vae, seed + _DATA_SEED_OFFSET)
    else:
        latent = pipe.unet.config.sample_size
        stream = sources.teacher_stream(
            pipe.unet, encode, grid, prompts, (pipe.unet.config.in_channels, latent, latent),
            r.teacher_pool, r.teacher_pool_steps, pool_guidance, seed, state / "teacher-samples.pt",
            parallel=parallel,
        )  # fmt: skip

    def record(method: str, n: int) -> DistillationRecord:
        return DistillationRecord(
            method=method,
            guidance_embedded=True,
            guidance_range=guidance_range,
            steps=(n,),
            teacher_unet_sha256=teacher_hash,
            data=data,
        )

    def save(unet, n: int, method: str) -> Path:
        if parallel.is_main:
            _save(pipe, unet, out / f"steps-{n}", record(method, n))
        return out / f"steps-{n}"

    student = guidance_student(pipe.unet).to(parallel.device)
    train_guidance(
        pipe.unet, student, encode, stream, grid, r, guidance_range, steps[0],
        state / "guidance", seed, progress, parallel,
    )  # fmt: skip
    outputs = {steps[0]: save(student, steps[0], "guidance")}
    # the two fewest-step students: the tiny decoder learns on their samples too
    finals = [(student, steps[0])]
    teacher = student
    for n in steps[1:]:
        student = copy_student(teacher)
        train_round(
            teacher, student, encode, stream, grid, r, guidance_range, n,
            state / f"steps-{n}", seed + n, progress, parallel,
        )  # fmt: skip
        outputs[n] = save(student, n, "progressive")
        finals = [*finals, (student, n)][-2:]
        teacher = student
    if tiny_decoder and r.tiny_steps:
        from edgediff.models.distill.tiny_decoder import tiny_decoder_for, train_tiny_decoder
        from edgediff.models.presets import save_pipeline

        if parallel.is_main:
            _check_tiny_stage(state / "tiny-decoder", r.tiny_settings())
        parallel.barrier()
        tiny = tiny_decoder_for(pipe.vae, r).to(parallel.device)
        mixed = sources.with_student_samples(stream, finals, encode, grid, guidance_range, seed)
        train_tiny_decoder(
            tiny, pipe.vae, mixed, r, state / "tiny-decoder", seed, progress, parallel
        )
        if parallel.is_main:
            save_pipeline(tiny, out / TINY_DECODER_FOLDER)
    parallel.barrier()
    if parallel.is_main:
        print(f"distilled {', '.join(map(str, steps))} steps in "
              f"{(time.perf_counter() - began) / 60:.1f} min")  # fmt: skip
    return outputs


def _save(pipe, unet, folder: Path, record: DistillationRecord) -> Path:
    """The teacher's pipeline with `unet` in its place, and the record beside it."""
    from edgediff.models.presets import save_pipeline

    teacher_unet = pipe.unet
    pipe.unet = unet
    try:
        text = json.dumps(asdict(record), indent=2) + "\n"
        save_pipeline(pipe, folder, extra_files={DISTILLATION_FILE: text})
    finally:
        pipe.unet = teacher_unet
    return folder
