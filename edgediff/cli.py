"""The `edgediff` command: one subcommand per stage, from training to TensorRT engines."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgediff import __version__
from edgediff.bundle.schema import PRECISIONS
from edgediff.errors import EdgediffError, InputError
from edgediff.runtime.backends import DEFAULT_BACKEND
from edgediff.runtime.memory import DEFAULT_MEMORY, MEMORY_MODES
from edgediff.runtime.request import (
    DECODERS,
    DEFAULT_COUNT,
    DEFAULT_DECODER,
    DEFAULT_ETA,
    DEFAULT_GUIDANCE,
    DEFAULT_INPAINT_STRENGTH,
    DEFAULT_OUTPUT,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
)
from edgediff.serve.settings import (
    SERVE_BATCH_WAIT_MS,
    SERVE_HOST,
    SERVE_MAX_BATCH,
    SERVE_MAX_QUEUE,
    SERVE_PORT,
)
from edgediff.tolerances import QUANT_TARGET_PSNR_DB

_F = TypeVar("_F", bound=Callable[..., Any])

# Options several commands share, written once so that a flag means the same thing and reads
# the same help in every command; the generation defaults come from edgediff.runtime.request.


def _options(*decorators: Callable[[_F], _F]) -> Callable[[_F], _F]:
    # click lists options in decorator order, top first: apply them bottom-up, as stacked.
    def apply(function: _F) -> _F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def backend_option(function: _F) -> _F:
    """--backend: what runs the models."""
    return click.option(
        "--backend",
        default=DEFAULT_BACKEND,
        show_default=True,
        help="ort-cpu, ort-cuda, ort-trt (TensorRT through ONNX Runtime, engines cached in the "
        "bundle) or trt (engines from `edgediff build`).",
    )(function)


def precision_option(function: _F) -> _F:
    """--precision: which of the bundle's models (or engines) to run."""
    return click.option(
        "--precision",
        default=None,
        help="fp32, fp16, int8 or fp8: the U-Net's model (and others' where the bundle has one). "
        "Default: each component's default. With --backend trt: the engines `edgediff build` made "
        "at that precision (default: the only set built).",
    )(function)


def decoder_option(function: _F) -> _F:
    """--decoder: the VAE's decoder or a distilled bundle's tiny one."""
    return click.option(
        "--decoder",
        type=click.Choice(DECODERS),
        default=DEFAULT_DECODER,
        show_default=True,
        help="The VAE's decoder, or the bundle's tiny one (from `edgediff distill`; faster).",
    )(function)


class _MemoryOption(click.Option):
    """--memory, whose help ends with what each mode costs the shipped model (estimated when
    the help is shown, so other commands pay nothing for it)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        try:
            from edgediff.runtime import Pipeline

            with Pipeline.load(memory="low", verify=False) as pipe:
                size = pipe.config.default_image_size
                estimate = pipe.memory_estimate(1, size, size)
                costs = ", ".join(f"{m} ~{estimate.peak(m) / 2**20:.0f} MB" for m in MEMORY_MODES)
        except EdgediffError:  # no shipped model, or no backend installed
            return record
        return record[0], f"{record[1]} Shipped model at {size}×{size}: {costs}."


def memory_option(function: _F) -> _F:
    """--memory: how much of the model stays loaded between the stages of a generation."""
    return click.option(
        "--memory",
        cls=_MemoryOption,
        type=click.Choice(MEMORY_MODES),
        default=DEFAULT_MEMORY,
        show_default=True,
        help="fast keeps every model and its working memory; balanced keeps the models and "
        "frees working memory after each model call; low loads each model for its stage and "
        "releases it (slowest, smallest). `edgediff info BUNDLE` estimates each for a bundle.",
    )(function)


def steps_option(function: _F) -> _F:
    """--steps: DDIM steps of one generation."""
    return click.option(
        "--steps",
        type=int,
        default=None,
        help=f"DDIM steps (default: the bundle's recommended count; {DEFAULT_STEPS} for a bundle "
        "that recommends none).",
    )(function)


def guidance_option(function: _F) -> _F:
    """--guidance: the classifier-free guidance scale."""
    return click.option(
        "--guidance",
        type=float,
        default=None,
        help="Classifier-free guidance scale; <= 1 turns guidance off (default: the bundle's "
        f"recommended scale; {DEFAULT_GUIDANCE:g} for a bundle that recommends none).",
    )(function)


_NOISE_SEED_HELP = "Noise seed: the same seed gives the same images."


def seed_option(default: int | None = 0, help: str = _NOISE_SEED_HELP) -> Callable[[_F], _F]:
    """--seed, an integer; `help` for commands where it seeds something else than noise."""
    return click.option(
        "--seed", type=int, default=default, show_default=default is not None, help=help
    )


def sampling_options(seed: int | None = 0, seed_note: str = "") -> Callable[[_F], _F]:
    """--steps, --guidance and --seed (noise; `seed_note` adds what else it does here)."""
    seed_help = " ".join(filter(None, (_NOISE_SEED_HELP, seed_note)))
    return _options(steps_option, guidance_option, seed_option(seed, seed_help))


def size_options(function: _F) -> _F:
    """--height and --width of the generated images."""
    return _options(
        click.option(
            "--height",
            type=int,
            default=None,
            help="Image height in pixels, a multiple of the VAE factor (default: the model's).",
        ),
        click.option(
            "--width",
            type=int,
            default=None,
            help="Image width in pixels, a multiple of the VAE factor (default: the model's).",
        ),
    )(function)


def force_option(help: str) -> Callable[[_F], _F]:
    """--force, a flag; `help` says what it replaces in this command."""
    return click.option("--force", is_flag=True, help=help)


class _Group(click.Group):
    """Turns edgediff's errors into one line on stderr and a non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgediffError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


class _WarningFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgediff")
def cli() -> None:
    """edgediff: Stable-Diffusion-shaped models from PyTorch checkpoints to fast inference.

    \b
    Typical flow:
      edgediff generate "a big red circle on the left"  # the shipped model
      edgediff train                                 # train the shapes model (~2 h on 2 cores)
      edgediff export CHECKPOINT_DIR BUNDLE_DIR      # PyTorch -> verified ONNX bundle
      edgediff generate "a red circle" --bundle BUNDLE_DIR
      edgediff eval BUNDLE_DIR                       # does it draw what prompts say?
      edgediff calibrate BUNDLE_DIR                  # record real inputs for quantisation
      edgediff quantize BUNDLE_DIR --precision int8  # Q/DQ models, measured mixed precision
      edgediff generate "a red circle" --bundle BUNDLE_DIR --precision int8
      edgediff build BUNDLE_DIR --precision int8     # TensorRT engines, on the GPU that runs them
      edgediff generate "a red circle" --bundle BUNDLE_DIR --backend trt
      edgediff bench BUNDLE_DIR                      # accuracy against latency, per config
      edgediff serve BUNDLE_DIR                      # HTTP: OpenAI- and A1111-style APIs
      edgediff info BUNDLE_DIR
    """
    # transformers announces at import that torchvision is absent (edgediff never needs it).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_WarningFormatter())
    logger = logging.getLogger("edgediff")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _chosen_students(students: dict[int, Path], text: str) -> dict[int, Path]:
    """The students --students names, most steps first, or a one-line error."""
    try:
        wanted = {int(part) for part in text.split(",")}
    except ValueError:
        raise InputError(
            f"--students '{text}' must list step counts", "e.g. --students 2,1"
        ) from None
    missing = sorted(wanted - set(students), reverse=True)
    if missing:
        have = ",".join(map(str, students))
        raise InputError(
            f"--students {text}: no student for {','.join(map(str, missing))} steps",
            f"The run has students for {have}",
        )
    return {n: path for n, path in students.items() if n in wanted}


@cli.command()
@click.argument("checkpoint_dir", type=click.Path(path_type=Path))
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--fp16", is_flag=True, help="Store U-Net and text encoder weights in fp16.")
@click.option("--fp16-vae", is_flag=True, help="With --fp16, store the VAE in fp16 too.")
@click.option("--opset", default=18, show_default=True, help="ONNX opset version.")
@force_option("Replace BUNDLE_DIR if it exists (after success).")
@click.option("--no-verify", is_flag=True, help="Skip the comparison against PyTorch.")
@click.option(
    "--recommended-steps",
    type=click.IntRange(1, 1000),
    default=None,
    help="The DDIM steps `generate` makes when none are asked for (a distilled bundle's best "
    "trade-off).",
)
@click.option(
    "--recommended-guidance",
    type=float,
    default=None,
    help="The guidance scale `generate` uses when none is asked for (distilled students may "
    f"guide best at another scale than their teacher; default: {DEFAULT_GUIDANCE}).",
)
@click.option(
    "--teacher",
    type=click.Path(path_type=Path),
    default=None,
    help="With a distill OUT folder: keep this teacher checkpoint as the U-Net (CFG, negative "
    "prompts) for step counts no student was distilled for.",
)
@click.option(
    "--students",
    "students_text",
    default=None,
    help="With a distill OUT folder: the step counts whose students the bundle keeps, e.g. 2,1 "
    "(default: all).",
)
@click.option(
    "--lora",
    "lora_texts",
    multiple=True,
    metavar="FILE[:SCALE]",
    help="Fuse a LoRA (diffusers/PEFT or kohya/A1111 .safetensors) into the U-Net and text "
    "encoder at SCALE (default 1); repeat for several. The manifest records each file's sha256.",
)
def export(
    checkpoint_dir, bundle_dir, fp16, fp16_vae, opset, force, no_verify, recommended_steps,
    recommended_guidance, teacher, students_text, lora_texts,
) -> None:  # fmt: skip
    """Export a diffusers Stable Diffusion checkpoint folder to an ONNX bundle.

    Each component (text encoder, U-Net, VAE decoder and encoder) is exported with dynamic
    batch and spatial axes and checked against PyTorch at two shapes; the bundle's
    manifest.json records hashes, signatures and the measured errors.

    CHECKPOINT_DIR may be an `edgediff distill` OUT folder: the student with the most steps
    becomes the U-Net and every other one a U-Net for its step count (unet.steps-N), which
    generation picks when asked for that many steps; its tiny decoder becomes vae_decoder.tiny
    (`generate --decoder tiny`). With --teacher, the teacher is the U-Net and every student
    one for its step count. --students keeps only some of them. --lora fuses LoRAs first.
    """
    from edgediff.bundle.schema import steps_variant
    from edgediff.export import export_checkpoint
    from edgediff.export.bundle_writer import distilled_checkpoints
    from edgediff.models.distill.run import TINY_DECODER_FOLDER

    if fp16_vae and not fp16:
        raise click.UsageError("--fp16-vae only makes sense with --fp16")
    students = (
        {}
        if (checkpoint_dir / "model_index.json").exists()
        else distilled_checkpoints(checkpoint_dir)
    )
    for flag, given in (("--teacher", teacher), ("--students", students_text)):
        if given is not None and not students:
            raise InputError(
                f"{flag} goes with an `edgediff distill` OUT folder", "Pass OUT as CHECKPOINT_DIR"
            )
    if students_text is not None:
        students = _chosen_students(students, students_text)
    extras, tiny = {}, None
    if students:
        run_dir = checkpoint_dir
        first, *others = students
        checkpoint_dir = students[first] if teacher is None else teacher
        extras = {steps_variant(n): students[n] for n in (others if teacher is None else students)}
        if (run_dir / TINY_DECODER_FOLDER / "config.json").is_file():
            tiny = run_dir / TINY_DECODER_FOLDER
    from edgediff.export.lora import parse_lora

    loras = [parse_lora(text) for text in lora_texts]
    manifest = export_checkpoint(
        checkpoint_dir,
        bundle_dir,
        loras=loras,
        extra_unets=extras,
        tiny_decoder=tiny,
        recommended_steps=recommended_steps,
        recommended_guidance=recommended_guidance,
        fp16=fp16,
        fp16_vae=fp16_vae,
        opset=opset,
        force=force,
        verify=not no_verify,
        progress=True,
    )
    click.echo(f"wrote {bundle_dir} ({len(manifest.components)} components)")


# Files one `generate` writes at most: past this, listing and checking names is the slow part.
MAX_COUNT = 4096


@cli.command()
@click.argument("prompt")
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    default=None,
    help="Bundle folder (default: the model shipped with edgediff).",
)
@sampling_options(seed=None, seed_note="Default: a new one, printed and stored in the PNG.")
@click.option("--negative", default=None, help="Negative prompt.")
@size_options
@click.option(
    "-n",
    "--count",
    type=click.IntRange(1, MAX_COUNT),
    default=DEFAULT_COUNT,
    show_default=True,
    help=f"Images to generate (at most {MAX_COUNT} per command).",
)
@click.option(
    "--eta", default=DEFAULT_ETA, show_default=True, help="DDIM eta: 0 deterministic, 1 DDPM-like."
)
@click.option(
    "--image",
    type=click.Path(path_type=Path),
    default=None,
    help="Start from this picture (image-to-image): used at its size if that is a multiple of "
    "the model's size factor, else resized to --height x --width when given.",
)
@click.option(
    "--mask",
    type=click.Path(path_type=Path),
    default=None,
    help="With --image: inpaint where this mask is white, keep where it is black.",
)
@click.option(
    "--strength",
    type=float,
    default=None,
    help=f"With --image: how far to depart from it, 0 to 1 (default {DEFAULT_STRENGTH:g}; "
    f"{DEFAULT_INPAINT_STRENGTH:g} with --mask).",
)
@backend_option
@precision_option
@decoder_option
@memory_option
@click.option(
    "--vae-tiling/--no-vae-tiling",
    default=None,
    help="Decode (and encode --image) in overlapping tiles, which bounds the VAE's memory at "
    "any size (default: only when decoding the whole image would not fit in the memory "
    "available).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_OUTPUT,
    show_default=True,
    help="PNG to write; with -n N, NAME-0.png ... NAME-{N-1}.png.",
)
@force_option("Overwrite existing output files.")
def generate(
    prompt,
    bundle,
    steps,
    guidance,
    seed,
    negative,
    height,
    width,
    count,
    eta,
    backend,
    precision,
    decoder,
    out,
    force,
    image,
    mask,
    strength,
    memory,
    vae_tiling,
) -> None:
    """Generate images for PROMPT and write them as PNG (parameters in a PNG text chunk).

    With --image, edit a picture instead (image-to-image); with --mask too, repaint only where
    the mask is white (inpainting).
    """
    from edgediff.runtime import Pipeline
    from edgediff.runtime.image_inputs import open_image
    from edgediff.runtime.images import save_png
    from edgediff.runtime.request import GenerationRequest, SourceImage, output_paths

    if out.suffix.lower() != ".png":
        raise EdgediffError(f"--out '{out}' is not a .png file", "Name the output NAME.png")
    paths = output_paths(out, count)
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise EdgediffError(f"'{existing[0]}' already exists", "Pass --force or choose --out")
    if mask is not None and image is None:
        raise InputError("--mask needs the --image it masks", "Pass --image too")
    if strength is not None and image is None:
        raise InputError("--strength applies to --image", "Pass --image, or drop --strength")
    source = None
    if image is not None:
        picture, picture_sha256 = open_image(image, "--image")
        masking, mask_sha256 = (None, None) if mask is None else open_image(mask, "--mask")
        source = SourceImage(picture, picture_sha256, masking, mask_sha256, strength)
    request = GenerationRequest(
        prompt,
        negative_prompt=negative,
        steps=steps,
        guidance=guidance,
        eta=eta,
        seed=seed,
        height=height,
        width=width,
        count=count,
        source=source,
    ).with_seed()
    load = dict(backend=backend, precision=precision, decoder=decoder, memory=memory)
    with Pipeline.load(bundle, **load) as pipe:
        steps = request.steps or pipe.default_steps
        guidance = pipe.guidance_for(steps) if request.guidance is None else request.guidance
        images = pipe(**request.pipeline_arguments(), vae_tiling=vae_tiling, progress=True)
        seconds = pipe.last_timings.total
        root = pipe.bundle.root
    record = request.provenance(
        steps=steps,
        guidance=guidance,
        height=images[0].height,
        width=images[0].width,
        bundle=str(root),
        backend=backend,
        precision=precision,
    )
    record["decoder"] = decoder
    for i, (picture, path) in enumerate(zip(images, paths, strict=True)):
        save_png(picture, path, {**record, "index": i})
        click.echo(str(path))
    click.echo(f"seed {request.seed}, {seconds:.2f} s", err=True)


@cli.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path), required=False)
@click.option("--no-verify", is_flag=True, help="Skip checking every file's sha256.")
def info(bundle_dir, no_verify) -> None:
    """Print a bundle's manifest as tables and check every file's hash.

    BUNDLE_DIR defaults to the model shipped with edgediff.
    """
    from edgediff.bundle.reader import Bundle
    from edgediff.runtime import Pipeline
    from edgediff.runtime.bundle_info import format_bundle, format_memory
    from edgediff.runtime.pipeline import default_bundle

    bundle = Bundle.open(default_bundle() if bundle_dir is None else bundle_dir)
    if not no_verify:
        bundle.verify()
    click.echo(format_bundle(bundle))
    # Mode "low" loads no model, so this reads only the manifest and configs.
    with Pipeline.load(bundle, memory="low", verify=False) as pipe:
        size = bundle.manifest.model.default_image_size
        click.echo("\n" + format_memory(pipe, (size, 2 * size, 4 * size)))
    if not no_verify:
        click.echo(f"all {len(bundle.manifest.files)} files match their sha256")


@cli.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path), required=False)
@click.option(
    "--host",
    default=SERVE_HOST,
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface; the API has no authentication).",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=SERVE_PORT, show_default=True, help="Port."
)
@backend_option
@precision_option
@decoder_option
@click.option(
    "--max-batch",
    type=click.IntRange(1, 256),
    default=SERVE_MAX_BATCH,
    show_default=True,
    help="Most images one pipeline call makes (requests that arrive "
    "together with the same steps, guidance and size share a call), and per request.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(1, 100_000),
    default=SERVE_MAX_QUEUE,
    show_default=True,
    help="Requests queued or running before new ones get 429.",
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(0, 1000),
    default=SERVE_BATCH_WAIT_MS,
    show_default=True,
    help="How long a request that finds the pipeline idle waits for others to share its "
    "call (under load, requests that queue meanwhile share it anyway).",
)
@click.option(
    "--max-size",
    type=click.IntRange(8, 16384),
    default=None,
    help="Largest width or height served (default: 4x the model's image size).",
)
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="Serve with Ray Serve: one pipeline per replica, across GPUs and machines.",
)
@click.option(
    "--address",
    default=None,
    help="With --ray: the Ray cluster to join (default: start a local Ray for this command).",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 1024),
    default=None,
    help="With --ray: pipeline replicas (default 1).",
)
@click.option(
    "--autoscale",
    default=None,
    metavar="MIN:MAX",
    help="With --ray: let Ray scale the replicas between MIN and MAX with the load.",
)
@click.option(
    "--gpus-per-replica",
    type=click.FloatRange(0, 64),
    default=None,
    help="With --ray: GPUs each replica holds (default: 1 for GPU backends, 0 for ort-cpu).",
)
@click.option(
    "--cpus-per-replica",
    type=click.FloatRange(0.1, 1024),
    default=None,
    help="With --ray: CPUs each replica holds; ort-cpu replicas run that many threads.",
)
def serve(
    bundle_dir,
    host,
    port,
    backend,
    precision,
    decoder,
    max_batch,
    max_queue,
    batch_wait_ms,
    max_size,
    use_ray,
    address,
    replicas,
    autoscale,
    gpus_per_replica,
    cpus_per_replica,
) -> None:
    """Answer text-to-image requests over HTTP until stopped (SIGTERM finishes what it took).

    \b
    POST /v1/images/generations   OpenAI's Images API (b64_json)
    POST /sdapi/v1/txt2img        AUTOMATIC1111's API
    GET  /health  /metrics  /docs
    BUNDLE_DIR defaults to the model shipped with edgediff. Needs `pip install 'edgediff[serve]'`
    (and '[ray]' for --ray).
    """
    from edgediff.serve.settings import (
        Limits,
        ModelChoice,
        RayPlan,
        default_gpus_per_replica,
        parse_autoscale,
    )

    ray_only = {
        "--address": address,
        "--replicas": replicas,
        "--autoscale": autoscale,
        "--gpus-per-replica": gpus_per_replica,
        "--cpus-per-replica": cpus_per_replica,
    }
    given = [flag for flag, value in ray_only.items() if value is not None]
    if given and not use_ray:
        raise InputError(f"{given[0]} is a Ray Serve option", "Add --ray, or drop it")
    if replicas is not None and autoscale is not None:
        raise InputError("--replicas and --autoscale both set", "Give one of them")
    scaling = None if autoscale is None else parse_autoscale(autoscale)
    model = ModelChoice(bundle_dir, backend, precision, decoder, max_size)
    limits = Limits(max_batch, max_queue, batch_wait_ms)
    if not use_ray:
        from edgediff.serve.server import serve_here

        serve_here(model, host, port, limits)
        return
    from edgediff.serve import require

    require("ray", "ray")
    from edgediff.serve.ray_app import serve_on_ray

    if gpus_per_replica is None:
        gpus_per_replica = default_gpus_per_replica(backend)
    plan = RayPlan(address, replicas or 1, scaling, gpus_per_replica, cpus_per_replica or 1.0)
    serve_on_ray(model, plan, host, port, limits)


@cli.command("random-checkpoint")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--preset",
    default="tiny",
    show_default=True,
    help="tiny, tiny-v (v-prediction) or sd15 (Stable Diffusion 1.5 sizes).",
)
@seed_option(help="Weight initialisation seed.")
@force_option("Replace OUT_DIR if it exists.")
def random_checkpoint(out_dir, preset, seed, force) -> None:
    """Write a random-weight Stable Diffusion checkpoint (diffusers layout) for trying the flow.

    Random weights make noise images, but real sizes and real graphs: use them to try the
    toolchain and to measure speed and memory (which do not depend on weight values).
    """
    from edgediff.models.presets import save_random_checkpoint

    save_random_checkpoint(preset, out_dir, seed=seed, force=force)
    click.echo(f"wrote {out_dir} (preset {preset}, random weights)")


@cli.command("eval")
@click.argument("bundle_dir", type=click.Path(path_type=Path), required=False)
@click.option("--prompts", default=256, show_default=True, help="Captions from trained pairs.")
@click.option(
    "--held-out", default=64, show_default=True, help="Captions of held-out colour+shape pairs."
)
@sampling_options(
    seed_note="It picks the prompts too (settings were picked on seed 1, so 0 is unseen)."
)
@backend_option
@precision_option
@decoder_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate(
    bundle_dir, prompts, held_out, steps, guidance, seed, backend, precision, decoder, as_json
) -> None:
    """Score a shapes bundle: does it draw what the caption says?

    Generates from captions like "a big red circle on the left", reads colour, shape, size and
    position back with the shipped evaluator network, and prints the accuracy per attribute,
    the share of images with every attribute right (chance: 0.25 %), and KID between the
    evaluator's features of generated and real images (lower is better). BUNDLE_DIR defaults
    to the shipped model.
    """
    import json

    from edgediff.bench.caption_eval import evaluate as run
    from edgediff.bench.caption_eval import format_scores, scores_as_dict
    from edgediff.metrics.evaluator import Evaluator
    from edgediff.runtime.pipeline import Pipeline

    if prompts < 1 or held_out < 0:
        raise InputError("--prompts must be at least 1 and --held-out at least 0", "Fix the counts")
    with Pipeline.load(
        bundle_dir, backend=backend, precision=precision, decoder=decoder
    ) as pipeline:
        steps = steps or pipeline.default_steps
        guidance = pipeline.guidance_for(steps) if guidance is None else guidance
        scores = run(pipeline, Evaluator.load(), prompts, held_out, steps, guidance, seed)
    if as_json:
        settings = {
            "steps": steps, "guidance": guidance, "seed": seed, "precision": precision,
            "decoder": decoder,
        }  # fmt: skip
        click.echo(json.dumps({"settings": settings, **scores_as_dict(scores)}, indent=2))
    else:
        click.echo(
            f"{steps} DDIM steps, guidance {guidance}, seed {seed}, precision "
            f"{precision or 'default'}, {decoder} decoder"
        )
        click.echo(format_scores(scores))


@cli.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Text file, one prompt per line (default: 64 shapes captions shipped with edgediff, "
    "none of them an `edgediff eval` prompt). Use prompts from your model's domain.",
)
@sampling_options()
@click.option("--samples", default=32, show_default=True, help="Prompts sampled (cycled).")
@click.option("--batch-size", default=4, show_default=True, help="Prompts per pipeline call.")
@size_options
@force_option("Record again over existing calibration data.")
def calibrate(
    bundle_dir, prompts_file, steps, guidance, seed, samples, batch_size, height, width, force
) -> None:
    """Record real component inputs for quantisation into BUNDLE_DIR.

    Samples the bundle's own fp32 pipeline and keeps every U-Net input (latents, timestep,
    text embeddings; both classifier-free-guidance halves) at every planned timestep, and the
    text encoder's and VAE decoder's inputs, under BUNDLE_DIR/calibration/. Calibrate with the
    steps and guidance you will generate with: activations differ along the trajectory.
    """
    from edgediff.calibration.capture import calibrate as run
    from edgediff.calibration.prompts import read_prompts

    record = run(
        bundle_dir,
        read_prompts(prompts_file),
        samples=samples,
        steps=steps,
        guidance=guidance,
        seed=seed,
        batch_size=batch_size,
        force=force,
        progress=True,
        height=height,
        width=width,
    )
    click.echo(
        f"recorded {', '.join(record.inputs)} inputs of {record.prompts} samples x "
        f"{record.steps} steps (timesteps {', '.join(map(str, record.timesteps))}) "
        f"in {bundle_dir}/calibration"
    )
    click.echo(f"next: edgediff quantize {bundle_dir} --precision int8")


@cli.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option(
    "--precision",
    type=click.Choice(["int8", "fp8"]),
    default="int8",
    show_default=True,
    help="int8 (CPUs, every TensorRT GPU, Jetson) or fp8 E4M3 (TensorRT on Ada/Hopper).",
)
@click.option(
    "--components",
    default="unet",
    show_default=True,
    help="Comma-separated: unet, text_encoder, vae_decoder.",
)
@click.option(
    "--keep",
    default="auto",
    show_default=True,
    help="Layers left in float: auto (fewest most sensitive that meet --target-psnr), "
    "none, or comma-separated layer names from the sensitivity table.",
)
@click.option(
    "--target-psnr",
    default=QUANT_TARGET_PSNR_DB,
    show_default=True,
    help="dB of final latents (images for the VAE decoder) against fp32, for --keep auto.",
)
@click.option(
    "--probe-prompts",
    default=8,
    show_default=True,
    help="Calibration prompts sampled to measure each trial.",
)
@click.option(
    "--target",
    type=click.Choice(["tensorrt", "cpu"]),
    default="tensorrt",
    show_default=True,
    help="tensorrt: symmetric INT8, runs on TensorRT and ONNX Runtime alike. cpu: uint8 "
    "activations, ONNX Runtime's fast x86 kernels (SD 1.5 U-Net vs fp32: 1.95x vs 1.69x "
    "with AVX-512 VNNI, 1.56x vs 1.21x with AVX2), refused by TensorRT.",
)
@force_option("Replace a quantised model the bundle already has.")
def quantize(
    bundle_dir, precision, components, keep, target_psnr, probe_prompts, target, force
) -> None:
    """Write Q/DQ INT8 or FP8 models of a calibrated bundle's components.

    Weights are per-channel, activations per-tensor, all symmetric for TensorRT's explicit
    quantisation (--target cpu: uint8 activations for ONNX Runtime on x86). With --keep auto
    each layer is first quantised alone and scored by the PSNR of the pipeline's final output
    against fp32 on real trajectories; then the most sensitive layers stay in float, fewest
    first, until the whole model meets --target-psnr. Writes COMPONENT/model.PRECISION.onnx
    and COMPONENT/sensitivity.PRECISION.json; generate with
    `edgediff generate --precision PRECISION --bundle BUNDLE_DIR`.
    """
    from edgediff.calibration.quantize_bundle import (
        format_results,
        parse_components,
        parse_keep,
        quantize_bundle,
    )

    results = quantize_bundle(
        bundle_dir,
        precision,
        parse_components(components),
        parse_keep(keep),
        target_psnr=target_psnr,
        probe_prompts=probe_prompts,
        force=force,
        progress=True,
        target=target,
    )
    click.echo(format_results(results, target_psnr))


@cli.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option(
    "--precision",
    type=click.Choice(["fp16", "int8", "fp8", "best"]),
    default="fp16",
    show_default=True,
    help="fp16: fp16 kernels (TensorRT 11 and TensorRT-RTX build them from fp16 models, made "
    "in the bundle when missing). int8/fp8: the bundle's Q/DQ U-Net (and other Q/DQ "
    "components), strongly typed; the rest as fp16. best: fp8 where every target has FP8 "
    "(8.9+) and the bundle has an FP8 U-Net, else int8 if it has one, else fp16.",
)
@click.option(
    "--flavour",
    type=click.Choice(["tensorrt", "rtx"]),
    default=None,
    help="tensorrt: classic TensorRT 8.6-11 (Jetson, datacenter GPUs, desktops), builds on the "
    "GPU that runs the engines. rtx: TensorRT-RTX (RTX PCs), builds without a GPU for --targets. "
    "Default: whichever is installed.",
)
@click.option(
    "--targets",
    default=None,
    help="TensorRT-RTX only: compute capabilities to build for, e.g. 8.6,8.9,12.0 "
    "[default: 8.0,8.6,8.9,12.0]. FP8 needs 8.9+; Turing (7.5) needs --precision fp16 "
    "--fp16-vae.",
)
@click.option(
    "--fp16-vae",
    is_flag=True,
    help="TensorRT 11 / TensorRT-RTX: build the VAE decoder from an fp16 model too (by default "
    "it stays fp32, as fp16 VAEs overflow in some checkpoints).",
)
@click.option(
    "--batch",
    default="1:1:4",
    show_default=True,
    help="Images per call, MIN:OPT:MAX or N. The text encoder and U-Net get MIN..2·MAX "
    "(classifier-free guidance doubles the batch), optimised for 2·OPT.",
)
@click.option(
    "--size",
    default=None,
    help="Image size in pixels: SIZE, MIN:OPT:MAX or HxW:HxW:HxW. Default: the model's size.",
)
@click.option(
    "--static", is_flag=True, help="Fix every shape at OPT (fastest; enables CUDA graphs)."
)
@click.option(
    "--workspace", type=click.IntRange(min=1), default=None, help="Builder workspace limit, MB."
)
@click.option(
    "--tactic-memory",
    type=click.IntRange(min=1),
    default=None,
    help="Device memory tactics may use while building, MB (bound it on Jetson's shared memory).",
)
@click.option(
    "--timing-cache",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Classic TensorRT: timing cache file (default: "
    "BUNDLE/engines/trt/timing-trt-VERSION-smNN.cache).",
)
@force_option("Rebuild even engines whose key is unchanged.")
def build(
    bundle_dir,
    precision,
    flavour,
    targets,
    fp16_vae,
    batch,
    size,
    static,
    workspace,
    tactic_memory,
    timing_cache,
    force,
) -> None:
    """Build one TensorRT engine per component (text encoder, U-Net, VAE decoder).

    \b
    Two flavours:
      tensorrt  classic TensorRT 8.6-11. Builds on the GPU that runs the engines: Jetson
                Orin (JetPack 6: TensorRT 10.3), datacenter GPUs (H100), desktops.
      rtx       TensorRT-RTX 1.x. Builds ahead of time, on any x86-64 machine, GPU or not,
                for --targets; the engines run on RTX GPUs of those compute capabilities
                and compile their kernels at first run (cached in BUNDLE/engines/rtx/).
    An RTX desktop or laptop can use either.

    Each engine is keyed by its ONNX's sha256, the flavour and version, the GPU (classic) or
    targets (RTX), the precision, the shape profile and the builder flags: an engine whose key
    is unchanged is reused, anything else is rebuilt. Engines go to BUNDLE/engines/trt/ or
    BUNDLE/engines/rtx/ and into the manifest; run them with
    `edgediff generate --backend trt --bundle BUNDLE_DIR --precision PRECISION`.

    \b
    Examples:
      edgediff build BUNDLE --flavour rtx --precision int8              (no GPU needed)
      edgediff build BUNDLE --flavour rtx --precision fp8 --targets 8.9,12.0
      edgediff build BUNDLE --precision int8 --static --workspace 1024 --tactic-memory 1024
                                              (Jetson Orin: shared CPU/GPU memory)
    """
    from edgediff.bundle.reader import Bundle
    from edgediff.engines.build import build_engines, format_results
    from edgediff.engines.plan import BuildRequest, parse_targets
    from edgediff.engines.profiles import parse_size, parse_span
    from edgediff.engines.tensorrt_builder import build_engine, current_platform

    Bundle.open(bundle_dir)  # a bad path fails before TensorRT is looked for
    request = BuildRequest(
        precision=precision,
        batch=parse_span(batch, "batch"),
        size=None if size is None else parse_size(size),
        static=static,
        workspace_mb=workspace,
        tactic_memory_mb=tactic_memory,
        targets=None if targets is None else parse_targets(targets),
        fp16_vae=fp16_vae,
    )
    platform = current_platform(flavour)
    click.echo(platform.describe())
    results = build_engines(
        bundle_dir, request, platform, build_engine, timing_cache, force=force, progress=True
    )
    click.echo(format_results(results))


@cli.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path), required=False)
@click.option(
    "--backends", default=DEFAULT_BACKEND, show_default=True, help="Comma list of backends."
)
@click.option(
    "--precisions",
    default=None,
    help="Comma list (fp32, fp16, int8, fp8). Default: every precision the bundle's U-Net has.",
)
@click.option(
    "--steps",
    default=None,
    help="Comma list of DDIM steps. Default: every count the bundle's students were distilled "
    "for, and 4,8 for its teacher (2,4,8,16 for a bundle that is not distilled).",
)
@click.option(
    "--decoders",
    default=None,
    help="Comma list: full (the VAE's) and/or tiny (the bundle's tiny decoder, edgediff "
    "distill). Default: every decoder the bundle has.",
)
@click.option(
    "--prompts", default=64, show_default=True, help="Prompts scored for accuracy (shapes)."
)
@click.option("--runs", default=10, show_default=True, help="Timed runs after the warm-up.")
@click.option("--warmup", default=2, show_default=True, help="Untimed runs first.")
@guidance_option
@seed_option()
@click.option(
    "--architecture",
    type=click.Choice(["shapes", "sd15"]),
    default="shapes",
    show_default=True,
    help="shapes: the shapes model, accuracy scored by the evaluator. sd15: Stable Diffusion "
    "1.5 sizes with random weights (built into OUT/sd15 when no BUNDLE_DIR is given; needs "
    "[train]), latency and memory only, plus diffusers' PyTorch pipeline as a reference row.",
)
@click.option("--size", type=int, default=None, help="Image side in pixels (default: model's).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("bench"),
    show_default=True,
    help="Folder for report.json, report.md, pareto.png (and the outputs rows were scored on).",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="sd15: the diffusers checkpoint of BUNDLE_DIR, for the PyTorch reference row "
    "(default: the one built into OUT/sd15).",
)
@force_option("Replace a report of other settings in --out.")
def bench(
    bundle_dir, backends, precisions, steps, decoders, prompts, runs, warmup, guidance, seed,
    architecture, size, out, checkpoint, force,
) -> None:  # fmt: skip
    """Measure accuracy against latency for every backend × precision × steps (× decoder)
    combination.

    Per configuration: latency of the text encoder, one U-Net step, the VAE decoder and the
    whole image (median and p90 over --runs after --warmup), images per second, peak memory
    (each configuration runs in its own process), file sizes; and against fp32 on the CPU at
    the same prompt, seed and steps: PSNR of final latents, PSNR and SSIM of images, and on
    the shapes model the evaluator's caption accuracy and KID. Writes OUT/report.json,
    OUT/report.md and OUT/pareto.png. Started again with the same settings, it measures only
    the configurations that are missing.
    """
    from edgediff.bench.configs import (
        default_decoders,
        default_steps,
        expand,
        parse_list,
        parse_steps,
    )
    from edgediff.bench.run import BenchSettings, run_bench
    from edgediff.bundle.reader import Bundle
    from edgediff.runtime.pipeline import default_bundle

    if bundle_dir is None:
        if architecture == "sd15":
            from edgediff.bench.sd15 import prepare_sd15

            built_checkpoint, bundle_dir, _ = prepare_sd15(out / "sd15")
            checkpoint = checkpoint or built_checkpoint
        else:
            bundle_dir = default_bundle()
    bundle = Bundle.open(bundle_dir)
    unet_precisions = sorted(bundle.manifest.components["unet"].models, key=_precision_order)
    wanted = unet_precisions if precisions is None else parse_list(precisions, "precisions")
    settings = BenchSettings(
        architecture=architecture,
        prompts=prompts if architecture == "shapes" else 1,
        runs=runs,
        warmup=warmup,
        seed=seed,
        guidance=guidance,
        height=size,
        width=size,
    )
    configs = expand(
        parse_list(backends, "backends"),
        wanted,
        default_steps(bundle) if steps is None else parse_steps(steps),
        default_decoders(bundle) if decoders is None else parse_list(decoders, "decoders"),
    )
    if checkpoint is not None and architecture != "sd15":
        raise InputError("--checkpoint is for --architecture sd15's PyTorch reference row")
    run_bench(bundle_dir, configs, settings, out, force=force, checkpoint=checkpoint)
    click.echo(f"wrote {out / 'report.json'}, {out / 'report.md'} and {out / 'pareto.png'}")


def _precision_order(precision: str) -> int:
    return PRECISIONS.index(precision) if precision in PRECISIONS else len(PRECISIONS)


@cli.command()
@click.argument("stage", type=click.Choice(["all", "vae", "clip", "unet"]), default="all")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("out/shapes"),
    show_default=True,
    help="Run folder: resumable state in OUT/state, the result in OUT/checkpoint.",
)
@click.option(
    "--preset",
    default="shapes-64",
    show_default=True,
    help="shapes-64 (the shipped model, ~2 h on 2 cores) or shapes-quick (minutes, smoke test).",
)
@seed_option(help="Seed for weights, data and noise.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: all cores).")
def train(stage, out_dir, preset, seed, threads) -> None:
    """Train the tiny shapes model: VAE, then CLIP text encoder, then U-Net.

    STAGE runs one stage (later stages need the earlier ones finished in the same --out).
    Interrupt it at any time: the same command resumes from the last checkpoint. The result is
    a diffusers checkpoint; `edgediff export OUT/checkpoint BUNDLE` makes it a bundle.
    """
    import torch

    from edgediff.models.training.train import STAGES
    from edgediff.models.training.train import train as run

    if threads:
        torch.set_num_threads(threads)
    stages = STAGES if stage == "all" else (stage,)
    checkpoint = run(out_dir, preset, seed=seed, stages=stages)
    if checkpoint is not None:
        click.echo(f"wrote {checkpoint}; next: edgediff export {checkpoint} BUNDLE_DIR")


@cli.command()
@click.argument("checkpoint_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--preset",
    default="shapes",
    show_default=True,
    help="shapes (the shipped model's recipe) or quick (minutes, a smoke test).",
)
@click.option(
    "--guidance-range",
    default="1:8",
    show_default=True,
    help="LOW:HIGH, the guidance scales the students learn to take as an input.",
)
@click.option(
    "--steps",
    "steps_text",
    default="8,4,2,1",
    show_default=True,
    help="The guidance student's DDIM steps, then one progressive round per halving.",
)
@click.option(
    "--data",
    type=click.Choice(["shapes", "teacher"]),
    default="shapes",
    show_default=True,
    help="What students learn on: the shapes generator (the shipped model's training data), or "
    "the teacher's own samples of --prompts (no training set needed).",
)
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A text file, one prompt a line, for --data teacher.",
)
@seed_option(help="Seed for data, noise and guidance scales.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: all cores).")
def distill(
    checkpoint_dir, out_dir, preset, guidance_range, steps_text, data, prompts_file, seed, threads
) -> None:
    """Distil a checkpoint into few-step students that need one U-Net pass a step.

    Guidance distillation first folds classifier-free guidance into the U-Net (it takes the
    scale as an input), then each progressive round halves the steps; last, a tiny decoder
    learns the VAE decoder's images of its latents and of the students' samples. OUT_DIR/steps-N
    holds each student as a diffusers checkpoint and OUT_DIR/tiny-decoder the decoder, for
    `edgediff export`. Interrupt it at any time: the same command resumes.

    It runs on a CUDA GPU when torch has one. Data-parallel over several GPUs or machines
    (each process trains on its share of every batch): accelerate launch --multi_gpu
    --num_processes N $(which edgediff) distill ...
    """
    import torch

    from edgediff.models.distill.run import distill as run
    from edgediff.models.distill.run import parse_guidance_range, parse_steps

    steps = parse_steps(steps_text)
    scales = parse_guidance_range(guidance_range)
    prompts = None
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise InputError(f"--prompts '{prompts_file}' does not exist", "Pass a text file")
        prompts = [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
        if not prompts:
            raise InputError(f"--prompts '{prompts_file}' holds no prompt", "One prompt a line")
    if threads:
        torch.set_num_threads(threads)
    outputs = run(
        checkpoint_dir, out_dir, pool_guidance=DEFAULT_GUIDANCE, recipe=preset,
        guidance_range=scales, steps=steps, data=data, prompts=prompts, seed=seed,
    )  # fmt: skip
    from edgediff.models.training.parallel import Parallel

    if not Parallel.from_environment().is_main:
        return
    for n, folder in outputs.items():
        click.echo(f"{n} steps: {folder}")
    click.echo(f"next: edgediff export {out_dir} BUNDLE_DIR (every student, and the tiny decoder)")


@cli.group(cls=_Group)
def cache() -> None:
    """Bundle files already verified: loads skip hashing them.

    Loading a bundle checks every model file's sha256 against manifest.json, so a changed or
    corrupted file is refused before it is used; for Stable Diffusion sizes that is gigabytes
    to hash on every load. A file that matched is remembered with its identity (path, device,
    inode, size, modification and change times); while all of them are unchanged and the
    manifest asks for the same sha256, the file is trusted without hashing. Rewriting a file
    sets its change time, which only root can set back, so a changed file is hashed again and
    refused if it differs.

    The cache is verified.json in $EDGEDIFF_CACHE_DIR (default: $XDG_CACHE_HOME/edgediff or
    ~/.cache/edgediff). EDGEDIFF_VERIFY_CACHE=0 turns it off: every load hashes every file.
    """


@cache.command("info")
def cache_info() -> None:
    """Show where the cache is and what it holds.

    Prints the cache file's path, whether loads use it, how many files it vouches for and its
    size on disk.
    """
    from edgediff.bundle.verified import cache_info as read_info

    info = read_info()
    click.echo(f"cache: {info.path}")
    if not info.enabled:
        click.echo("in use: no (EDGEDIFF_VERIFY_CACHE=0 or Windows): every load hashes every file")
    if not info.exists:
        click.echo("entries: 0 (no cache yet: the next verified load writes it)")
        return
    note = "" if info.usable else " (unreadable or corrupt: ignored, rewritten by the next load)"
    click.echo(f"entries: {info.entries} files verified{note}")
    click.echo(f"size: {_kilobytes(info.bytes)}")


@cache.command("clear")
def cache_clear() -> None:
    """Delete the cache; loads hash every file again.

    Says which file it removed and how many entries it held. The next load of each bundle
    hashes all its files, and remembers those that match.
    """
    from edgediff.bundle.verified import clear_cache

    info = clear_cache()
    if not info.exists:
        click.echo(f"nothing to remove: {info.path} does not exist")
        return
    size = _kilobytes(info.bytes)
    click.echo(f"removed {info.path} ({info.entries} files verified, {size})")


def _kilobytes(size: int) -> str:
    return f"{size / 1000:.1f} kB"


def main() -> None:
    """Console entry point."""
    cli(prog_name="edgediff")


if __name__ == "__main__":
    main()
