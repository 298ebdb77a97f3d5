"""Measure one bench configuration in a process of its own, so its peak memory is its own.

    python -m edgediff.bench.measure SPEC.json RESULT.json OUTPUTS.npz

SPEC names the bundle, backend, precision, steps, prompts and runs. RESULT gets the timings,
memory and file sizes; OUTPUTS the final latents and images of every prompt, which the parent
compares with the reference configuration's. Only the runtime is imported: no torch.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.metrics.timing import summarize
from edgediff.runtime.request import DEFAULT_DECODER

COMPONENT_TIMINGS = ("text_encoder", "unet_step", "vae_decoder", "end_to_end")


def _gpu_memory_mb() -> float | None:
    """Device memory in use on GPU 0 (all processes), or None without cuda-python / a GPU."""
    try:
        from edgediff.runtime.cuda import Cuda

        cuda = Cuda()
        free, total = cuda.rt.cudaMemGetInfo()[1:]
    except Exception:  # no cuda-python, driver or GPU: CPU-only configurations
        return None
    return round((total - free) / 2**20, 1)


def call_timings(components: dict[str, float], steps: int, seconds: float) -> dict[str, float]:
    """One generation's seconds per part, from seconds spent in each component."""
    return {
        "text_encoder": components.get("text_encoder", 0.0),
        "unet_step": components.get("unet", 0.0) / steps,
        "vae_decoder": components.get("vae_decoder", 0.0),
        "end_to_end": seconds,
    }


def result_row(
    load_s: float,
    calls: list[dict[str, float]],
    gpu_memory_mb: float | None,
    file_bytes: dict[str, int],
) -> dict[str, Any]:
    """A configuration's measurements as report.json holds them (`calls`: timed runs only)."""
    latency = {k: summarize([c[k] for c in calls]) for k in COMPONENT_TIMINGS}
    return {
        "load_s": round(load_s, 3),
        "latency_s": {k: v.as_dict() for k, v in latency.items()},
        "images_per_s": round(1.0 / latency["end_to_end"].median, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "gpu_memory_mb": gpu_memory_mb,
        "file_mb": {k: round(v / 2**20, 3) for k, v in file_bytes.items()},
    }


def measure(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Timings (warm-up excluded), memory and file sizes, and every prompt's outputs."""
    from edgediff.runtime.pipeline import Pipeline

    start = time.perf_counter()
    pipe = Pipeline.load(
        spec["bundle"],
        backend=spec["backend"],
        precision=spec["precision"],
        decoder=spec.get("decoder", DEFAULT_DECODER),
    )
    load_s = time.perf_counter() - start
    request = dict(
        num_inference_steps=spec["steps"],
        guidance_scale=spec["guidance"],
        height=spec["height"],
        width=spec["width"],
    )
    prompts = spec["prompts"]

    def one_image() -> dict[str, float]:
        begin = time.perf_counter()
        pipe(prompts[0], seed=spec["seed"], output_type="np", **request)
        seconds = time.perf_counter() - begin
        return call_timings(pipe.last_timings.components, spec["steps"], seconds)

    calls = [one_image() for _ in range(spec["warmup"] + spec["runs"])][spec["warmup"] :]

    latents, images = [], []
    batch = spec["batch_size"]
    for first in range(0, len(prompts) if spec["outputs"] else 0, batch):
        x = pipe(
            prompts[first : first + batch],
            seed=spec["seed"] + first,
            output_type="latent",
            **request,
        )
        latents.append(x)
        images.append(pipe.decode(x))
    outputs = (
        {"latents": np.concatenate(latents), "images": np.concatenate(images)} if latents else {}
    )

    manifest = pipe.bundle.manifest
    result = result_row(
        load_s,
        calls,
        None if spec["backend"] == "ort-cpu" else _gpu_memory_mb(),
        {
            name: sum(manifest.files[f].bytes for f in files)
            for name, files in pipe.model_files.items()
        },
    )
    return result, outputs


def main(argv: list[str]) -> None:
    """Entry point of the child process; a user-fixable problem ends it with one line."""
    from edgediff.errors import EdgediffError

    spec_path, result_path, outputs_path = map(Path, argv)
    try:
        result, outputs = measure(json.loads(spec_path.read_text()))
    except EdgediffError as e:
        sys.exit(str(e))
    if outputs:
        with open(outputs_path, "wb") as f:
            np.savez(f, **outputs)
    result_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
