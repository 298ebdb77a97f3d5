"""Record what each component really sees while the bundle's fp32 pipeline samples prompts.

Every U-Net call of the denoising loop is kept as fed, both CFG halves in one batch, at every
planned timestep; so are the text encoder's token ids and the VAE decoder's latents. Arrays
of one input are stacked over calls and saved as .npy in the bundle, so calibration streams
them from disk (memory-mapped) instead of holding them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgediff.errors import BundleError, InputError
from edgediff.runtime.bundle import Bundle, Calibration, with_files, write_manifest
from edgediff.runtime.files import atomic_path, atomic_write_text
from edgediff.runtime.pipeline import PIPELINE_COMPONENTS, Pipeline

FOLDER = "calibration"
PROMPTS_FILE = f"{FOLDER}/prompts.txt"
RECORDED = PIPELINE_COMPONENTS  # every component the denoising pipeline runs


class _RecordingSession:
    """A session that keeps a copy of every feed it runs."""

    def __init__(self, session, calls: list[dict[str, np.ndarray]]):
        self._session = session
        self._calls = calls
        self.input_names = session.input_names
        self.output_names = session.output_names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Record the feeds, then run."""
        self._calls.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self._session.run(feeds)


@contextlib.contextmanager
def recording(pipeline: Pipeline) -> Iterator[dict[str, list[dict[str, np.ndarray]]]]:
    """While open, every call of each recorded component is appended to the yielded lists."""
    calls: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in RECORDED}
    original = dict(pipeline.sessions)
    for name in RECORDED:
        pipeline.sessions[name] = _RecordingSession(original[name], calls[name])
    try:
        yield calls
    finally:
        pipeline.sessions.update(original)


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
    with recording(pipeline) as calls:
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
    steps: int = 8,
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
    from edgediff.runtime.guidance import DEFAULT_GUIDANCE

    bundle = Bundle.open(bundle_dir)
    if bundle.manifest.calibration is not None and not force:
        raise BundleError(
            f"'{bundle_dir}' already holds calibration data",
            "Pass --force to record it again (quantised models made from it stay as they are)",
        )
    for component in RECORDED:
        if "fp32" not in bundle.manifest.components[component].models:
            raise BundleError(
                f"calibration samples the fp32 pipeline, and the bundle's {component} has no "
                "fp32 model",
                "Export the checkpoint without --fp16 and calibrate that bundle",
            )
    if steps < 1:
        raise InputError(f"--steps must be >= 1, got {steps}")
    guidance = DEFAULT_GUIDANCE if guidance is None else guidance
    chosen = choose_prompts(prompts, samples)
    pipeline = Pipeline.load(bundle, precision="fp32")
    arrays = sample_inputs(
        pipeline, chosen, steps, guidance, seed, batch_size, progress, height, width
    )

    root = Path(bundle.root)
    inputs: dict[str, dict[str, str]] = {}
    for component, named in arrays.items():
        for key, array in named.items():
            rel = f"{FOLDER}/{component}/{key}.npy"
            with atomic_path(root / rel) as tmp, open(tmp, "wb") as f:
                np.save(f, array)
            inputs.setdefault(component, {})[key] = rel
    atomic_write_text(root / PROMPTS_FILE, "\n".join(chosen) + "\n")
    record = Calibration(
        prompts=len(chosen),
        prompts_sha256=prompts_sha256(chosen),
        steps=steps,
        guidance=float(guidance),
        seed=seed,
        batch_size=batch_size,
        timesteps=tuple(int(t) for t in pipeline.scheduler.timesteps(steps)),
        inputs=inputs,
        height=height,
        width=width,
    )
    # Files are replaced one by one, each atomically; the manifest, written last, commits them.
    manifest = replace(bundle.manifest, calibration=record)
    write_manifest(root, with_files(manifest, root, [*record.files, PROMPTS_FILE]))
    return record


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
        raise BundleError(
            f"the bundle's calibration data holds no {component} inputs",
            f"Record them again: edgediff calibrate {bundle.root} --force",
        )
    return {key: bundle.path(rel) for key, rel in record.inputs[component].items()}
