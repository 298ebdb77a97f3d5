"""Stable Diffusion 1.5 sizes with random weights: the bundle a latency bench runs on, and the
diffusers PyTorch pipeline on the same weights as its reference row.

Latency and memory do not depend on weight values, so random weights give honest speed figures
at real sizes without downloading a model. Building needs the [train] extra (torch, diffusers),
~12 GB of disk and ~16 GB of memory; the bundle is built once and reused.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from edgediff.bench.child import run_python
from edgediff.bench.measure import call_timings, result_row


def _child(code: str, *args: str) -> tuple[float, float]:
    """Run python code in a child; (wall seconds, peak RSS in GB of it or its own children)."""
    # The export runs the U-Net in a helper process of its own: report the larger peak.
    code += (
        "; import resource as r; print(max(r.getrusage(r.RUSAGE_SELF).ru_maxrss,"
        " r.getrusage(r.RUSAGE_CHILDREN).ru_maxrss))"
    )
    start = time.perf_counter()
    out = run_python(["-c", code, *args], "building the SD 1.5 bundle")
    return time.perf_counter() - start, int(out.split()[-1]) / 2**20  # KiB -> GB


def prepare_sd15(work: Path) -> tuple[Path, Path, dict[str, float]]:
    """A random-weight SD 1.5 checkpoint in work/checkpoint and its bundle in work/bundle
    (each made only if missing); facts about the export when it ran now."""
    checkpoint, bundle = work / "checkpoint", work / "bundle"
    facts: dict[str, float] = {}
    if not (checkpoint / "model_index.json").exists():
        print(f"building a random SD 1.5 checkpoint in {checkpoint} (once)", file=sys.stderr)
        _child(
            "import sys; from edgediff.models.presets import save_random_checkpoint;"
            "save_random_checkpoint('sd15', sys.argv[1], force=True)",
            str(checkpoint),
        )
    if not (bundle / "manifest.json").exists():
        print(f"exporting it to {bundle} (once, ~10 min on 2 cores)", file=sys.stderr)
        wall, peak = _child(
            "import sys; from edgediff.export import export_checkpoint;"
            "export_checkpoint(sys.argv[1], sys.argv[2], force=True, progress=False)",
            str(checkpoint),
            str(bundle),
        )
        facts = {"export_seconds": round(wall, 1), "export_peak_rss_gb": round(peak, 2)}
    return checkpoint, bundle, facts


def measure_diffusers(spec: dict[str, Any]) -> dict[str, Any]:
    """diffusers' StableDiffusionPipeline (PyTorch, CPU) timed like a bench configuration."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(spec["checkpoint"], safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - start
    spent: dict[str, float] = {}

    def timed(module: torch.nn.Module, name: str) -> None:
        begun: list[float] = []
        module.register_forward_pre_hook(lambda *_: begun.append(time.perf_counter()))
        module.register_forward_hook(
            lambda *_: spent.__setitem__(
                name, spent.get(name, 0.0) + time.perf_counter() - begun.pop()
            )
        )

    timed(pipe.text_encoder, "text_encoder")
    timed(pipe.unet, "unet")
    timed(pipe.vae.decoder, "vae_decoder")
    calls = []
    for _ in range(spec["warmup"] + spec["runs"]):
        spent.clear()
        begin = time.perf_counter()
        with torch.no_grad():
            pipe(
                spec["prompts"][0],
                num_inference_steps=spec["steps"],
                guidance_scale=spec["guidance"],
                height=spec["height"],
                width=spec["width"],
                generator=torch.Generator().manual_seed(spec["seed"]),
                output_type="np",
            )
        calls.append(call_timings(spent, spec["steps"], time.perf_counter() - begin))
    sizes = {
        name: sum(
            f.stat().st_size for f in (Path(spec["checkpoint"]) / folder).glob("*.safetensors")
        )
        for name, folder in (("text_encoder", "text_encoder"), ("unet", "unet"), ("vae", "vae"))
    }
    return result_row(load_s, calls[spec["warmup"] :], None, sizes)


if __name__ == "__main__":
    spec_path, result_path = map(Path, sys.argv[1:3])
    result = measure_diffusers(json.loads(spec_path.read_text()))
    result_path.write_text(json.dumps(result))
