"""Stable Diffusion 1.5 sizes, random weights, ONNX Runtime CPU: edgediff vs diffusers, one run.

Prints, measured side by side in this one process tree:
  * export wall time and peak memory (measured in a child process that does only the export);
  * seconds per image for edgediff's runtime and for diffusers' PyTorch pipeline on the same
    weights, same size, steps, guidance and initial latents, and their ratio;
  * the runtime's overhead above the summed ONNX Runtime session time (goal <= 3 %).

    python benchmarks/sd15_cpu.py --work /tmp/sd15 [--size 256] [--steps 4] [--runs 2]

Needs ~12 GB free disk in --work and ~16 GB of memory. Weights are random: latency and memory
do not depend on their values, so these are honest speed figures at real sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from edgediff.bench.sd15 import prepare_sd15

PROMPT = "a photo of an astronaut riding a horse"


def main() -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgediff-sd15"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--runs", type=int, default=2, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    checkpoint, bundle, facts = prepare_sd15(args.work)

    import torch
    from diffusers import StableDiffusionPipeline

    from edgediff.runtime import Pipeline
    from edgediff.runtime.backends.onnxruntime import OrtBackend

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = Pipeline.load(bundle, backend=OrtBackend("ort-cpu", threads=args.threads))
    load_s = time.perf_counter() - t0
    reference = StableDiffusionPipeline.from_pretrained(checkpoint)
    reference.set_progress_bar_config(disable=True)

    f = pipe.config.vae_scale_factor
    shape = (1, pipe.config.latent_channels, args.size // f, args.size // f)
    latents = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    kwargs = dict(
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        height=args.size,
        width=args.size,
        output_type="np",
    )

    ours, theirs, overheads, sessions = [], [], [], []
    for run in range(args.runs + 1):  # run 0 warms up both
        start = time.perf_counter()
        a = pipe(PROMPT, latents=latents, **kwargs)
        t_ours = time.perf_counter() - start
        timings = pipe.last_timings
        start = time.perf_counter()
        with torch.no_grad():
            b = reference(PROMPT, latents=torch.from_numpy(latents), **kwargs).images
        t_theirs = time.perf_counter() - start
        if run:
            ours.append(t_ours)
            theirs.append(t_theirs)
            sessions.append(timings.backend)
            overheads.append((t_ours - timings.backend) / timings.backend)
        print(
            f"run {run}{' (warm-up)' if not run else ''}: edgediff {t_ours:.2f} s, "
            f"diffusers {t_theirs:.2f} s, max |image diff| {np.abs(a - b).max():.2e}"
        )

    result = {
        **facts,
        "size": args.size,
        "steps": args.steps,
        "guidance": args.guidance,
        "threads": args.threads,
        "runs": args.runs,
        "pipeline_load_seconds": round(load_s, 1),
        "edgediff_seconds_per_image": round(statistics.median(ours), 3),
        "diffusers_seconds_per_image": round(statistics.median(theirs), 3),
        "speedup_vs_diffusers": round(statistics.median(theirs) / statistics.median(ours), 3),
        "ort_session_seconds": round(statistics.median(sessions), 3),
        "runtime_overhead_percent": round(100 * statistics.median(overheads), 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
