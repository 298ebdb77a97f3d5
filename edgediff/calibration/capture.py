"""Record what each component really sees while the bundle's fp32 pipeline samples prompts.

Every U-Net call of the denoising loop is kept as fed, both CFG halves in one batch, at every
planned timestep; so are the text encoder's token ids and the VAE decoder's latents. Arrays
of one input are stacked over calls and saved as .npy in the bundle, so calibration streams
them from disk (memory-mapped) instead of holding them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from edgediff.bundle.edit import edit
from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import Calibration, kind_of
from edgediff.errors import BundleError, InputError
from edgediff.runtime.pipeline import PIPELINE_COMPONENTS, ModelCall, Models, Pipeline

FOLDER = "calibration"
PROMPTS_FILE = f"{FOLDER}/prompts.txt"
RECORDED = PIPELINE_COMPONENTS  # every component the denoising pipeline runs


def recorded_components(pipeline: Pipeline, steps: int) -> dict[str, str]:
    """Which component each model call of a `steps`-step generation runs (a distilled bundle's
    U-Net for that step count, say): their inputs are recorded under those names."""
    return {
        "text_encoder": "text_encoder",
        "unet": pipeline.unet_for(steps),
        "vae_decoder": "vae_decoder",
    }


def recording(
    models: Models, calls: dict[str, list[dict[str, np.ndarray]]], names: dict[str, str]
) -> Models:
    """`models` with each call keeping a copy of every feed it is given, in calls[names[call]]."""

    def kept(name: str, call: ModelCall) -> ModelCall:
        def run(**feeds: np.ndarray) -> dict[str, np.ndarray]:
            calls[name].append({k: np.array(v, copy=True) for k, v in feeds.items()})
            return call(**feeds)

        return run

    return replace(
        models, **{field: kept(name, getattr(models, field)) for field, name in names.items()}
    )


def batch_seed(seed: int, index: int) -> int:
    """Noise seed of calibration batch `index`: fixed by the run's seed, distinct per batch."""
    return seed * 1_000_003 + index


def sample_inputs(
    pipeline: Pipeline,
    prompts: list[str],
    steps: int,
    guidance: float,
    seed: int,
    batch_size: int,
    progress: bool = False,
    height: int | None = None,
    width: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Sample `prompts` in batches; return component -> input -> array stacked over calls."""
    if len(prompts) % batch_size:
        raise InputError(
            f"{len(prompts)} calibration samples do not split into batches of {batch_size}",
            f"Use a multiple of {batch_size} samples, or another --batch-size",
        )
    from tqdm.auto import tqdm

    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    names = recorded_components(pipeline, steps)
    calls: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in names.values()}
    models = recording(pipeline.models_for(steps), calls, names)
    for k, chunk in enumerate(
        tqdm(batches, desc="calibrating", unit="batch", disable=not progress)
    ):
        pipeline(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance,
            seed=batch_seed(seed, k),
            height=height,
            width=width,
            output_type="np",
            models=models,
        )
    return {
        name: {key: np.stack([c[key] for c in recorded]) for key in recorded[0]}
        for name, recorded in calls.items()
    }


def choose_prompts(prompts: list[str], samples: int) -> list[str]:
    """`samples` prompts: the first ones of the list, cycling through it if it is shorter."""
    if samples < 1:
        raise InputError(f"--samples must be >= 1, got {samples}")
    return [prompts[i % len(prompts)] for i in range(samples)]


def calibrate(
    bundle_dir: str | Path,
    prompts: list[str],
    samples: int = 32,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 4,
    force: bool = False,
    progress: bool = False,
    height: int | None = None,
    width: int | None = None,
) -> Calibration:
    """Record the fp32 pipeline's component inputs into the bundle; return the record."""
    from edgediff.calibration.prompts import prompts_sha256

    with edit(bundle_dir, "edgediff calibrate") as tx:
        bundle = tx.bundle
        if bundle.manifest.calibration is not None and not force:
            raise BundleError(
                f"'{bundle_dir}' already holds calibration data",
                "Pass --force to record it again (quantised models made from it stay as they are)",
            )
        for component in ("text_encoder", "vae_decoder", *_unets(bundle)):
            if "fp32" not in bundle.manifest.components[component].models:
                raise BundleError(
                    f"calibration samples the fp32 pipeline, and the bundle's {component} has no "
                    "fp32 model",
                    "Export the checkpoint without --fp16 and calibrate that bundle",
                )
        if steps is not None and steps < 1:
            raise InputError(f"--steps must be >= 1, got {steps}")
        chosen = choose_prompts(prompts, samples)
        with Pipeline.load(bundle, precision="fp32") as pipeline:
            steps = pipeline.default_steps if steps is None else steps
            guidance = pipeline.guidance_for(steps) if guidance is None else guidance
            arrays = sample_inputs(
                pipeline, chosen, steps, guidance, seed, batch_size, progress, height, width
            )
            timesteps = tuple(int(t) for t in pipeline.scheduler.timesteps(steps))
        inputs: dict[str, dict[str, str]] = {}
        for component, named in arrays.items():
            for key, array in named.items():
                rel = f"{FOLDER}/{component}/{key}.npy"
                np.save(tx.path(rel), array)
                inputs.setdefault(component, {})[key] = rel
        tx.write_file(PROMPTS_FILE, "\n".join(chosen) + "\n")
        # Recordings of an earlier calibration that this one does not repeat (another step
        # count's U-Net, say) leave the bundle with it.
        recorded = {rel for named in inputs.values() for rel in named.values()}
        for rel in bundle.manifest.files:
            if rel.startswith(f"{FOLDER}/") and rel != PROMPTS_FILE and rel not in recorded:
                tx.drop_file(rel)
        record = Calibration(
            prompts=len(chosen),
            prompts_sha256=prompts_sha256(chosen),
            steps=steps,
            guidance=float(guidance),
            seed=seed,
            batch_size=batch_size,
            timesteps=timesteps,
            inputs=inputs,
            height=height,
            width=width,
        )
        tx.set_calibration(record)
    return record


def _unets(bundle: Bundle) -> list[str]:
    return [c for c in bundle.manifest.components if kind_of(c) == "unet"]


def calibration_prompts(bundle: Bundle) -> list[str]:
    """The prompts a bundle's calibration sampled, in order."""
    return (bundle.root / PROMPTS_FILE).read_text(encoding="utf-8").splitlines()


def calibration_record(bundle: Bundle, component: str) -> dict[str, Path]:
    """Input name -> .npy path of a component's recorded calls, or a clear error."""
    record = bundle.manifest.calibration
    if record is None:
        raise BundleError(
            f"'{bundle.root}' has no calibration data",
            f"Record it first: edgediff calibrate {bundle.root}",
        )
    if component not in record.inputs:
        steps = component.removeprefix("unet.steps-")
        at = f" --steps {steps}" if steps.isdigit() else ""
        raise BundleError(
            f"the bundle's calibration data holds no {component} inputs (it was recorded at "
            f"{record.steps} steps)",
            f"Record them: edgediff calibrate {bundle.root}{at} --force",
        )
    return {key: bundle.path(rel) for key, rel in record.inputs[component].items()}
