"""Peak memory and seconds per image at SD 1.5 sizes: edgediff's memory modes vs diffusers.

Every row runs in a fresh child process that loads the model and makes one image (the first
of a process, for both sides), so its peak resident set size (VmHWM) is that row's alone:

  * edgediff, ORT CPU, each memory mode (low, balanced, fast) at each --sizes;
  * diffusers' StableDiffusionPipeline (PyTorch, CPU) on the same checkpoint, same latents;
  * with --int8, edgediff balanced with the bundle's INT8 U-Net and VAE decoder, which this
    script does not make (on 2 cores, ~1 min and ~4 min, 18 GB peak while quantising):

      edgediff calibrate WORK/bundle --samples 2 --batch-size 1 --steps 4 --guidance 7.5 \
          --height 256 --width 256
      edgediff quantize WORK/bundle --components unet,vae_decoder --keep none --target cpu

  * edgediff decoding one --decode-size latent with the tiled VAE, GroupNorm statistics
    shared across tiles in --decode-passes passes (no generation), against the estimate.

    python benchmarks/memory_sd15.py --work out/sd15 [--sizes 256 512 1024] [--steps 4]

Weights are random (edgediff.bench.sd15): memory and speed do not depend on their values.
Needs ~12 GB of disk in --work for the one-time export and ~16 GB of memory at 1024².
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: a child process loads only what its row needs
    from edgediff.bundle.reader import Bundle

PROMPT = "a photo of an astronaut riding a horse"
GiB = 2**30


def _peak_gib() -> float:
    """This process's peak resident set size (VmHWM: ru_maxrss would include the parent's,
    which Linux carries over fork and exec)."""
    with open("/proc/self/status") as status:
        kib = int(status.read().split("VmHWM:")[1].split()[0])
    return kib * 1024 / GiB


def _latents(size: int) -> object:
    import numpy as np

    shape = (1, 4, size // 8, size // 8)
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def child_edgediff(spec: dict) -> dict:
    """One generation (or one tiled decode) with edgediff in this process."""
    from edgediff.runtime import Pipeline
    from edgediff.runtime.memory import BASE_BYTES

    start = time.perf_counter()
    pipe = Pipeline.load(
        spec["bundle"],
        precision=spec.get("precision"),
        memory=spec["memory"],
        backend_options={"threads": spec["threads"]},
    )
    load_s = time.perf_counter() - start
    size, steps, guidance = spec["size"], spec["steps"], spec["guidance"]
    start = time.perf_counter()
    if spec.get("decode_only"):
        from edgediff.runtime.vae_tiling import decode_tiled, decode_tiled_synced

        model = pipe.bundle.path(pipe.bundle.model(pipe.decoder).file)
        z = _latents(size) / pipe.config.scaling_factor
        f = pipe.config.vae_scale_factor
        if spec["passes"] == 1:  # plain tiles: the same memory, one pass
            session = pipe.backend.load(model)
            decode_tiled(lambda x: session.run({"latent_sample": x})["sample"], z, f)
        else:
            parts = pipe.backend.load_vae_for_tiles(model)
            whole = None if parts.whole is None else parts.whole.run
            decode_tiled_synced(parts.tiled.run, z, f, passes=spec["passes"], whole=whole)
        tiled = True
        estimate = pipe.memory_estimate(
            1, size, size, guidance, steps, vae_tiling=True, synced_tiles=spec["passes"] > 1
        )
        decoder = estimate.weights[pipe.decoder] + estimate.activations[pipe.decoder]
        estimate_gib = (BASE_BYTES + decoder) / GiB
    else:
        tiled = pipe.needs_vae_tiling(1, size, size, guidance, steps)
        pipe(PROMPT, latents=_latents(size), num_inference_steps=steps, guidance_scale=guidance,
             output_type="np")  # fmt: skip
        estimate = pipe.memory_estimate(1, size, size, guidance, steps, tiled)
        estimate_gib = estimate.peak(spec["memory"]) / GiB
    seconds = time.perf_counter() - start
    pipe.close()
    return {"load_s": load_s, "seconds": seconds, "peak_gib": _peak_gib(),
            "estimate_gib": estimate_gib, "vae_tiled": tiled}  # fmt: skip


def child_diffusers(spec: dict) -> dict:
    """One generation with diffusers' PyTorch pipeline in this process."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(spec["checkpoint"], safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - start
    size = spec["size"]
    start = time.perf_counter()
    with torch.no_grad():
        pipe(PROMPT, latents=torch.from_numpy(_latents(size)), height=size, width=size,
             num_inference_steps=spec["steps"], guidance_scale=spec["guidance"],
             output_type="np")  # fmt: skip
    seconds = time.perf_counter() - start
    return {"load_s": load_s, "seconds": seconds, "peak_gib": _peak_gib()}


def _fp32_weight_gib(bundle: Bundle) -> float:
    """Bytes of the fp32 text encoder, U-Net and VAE decoder of an opened bundle (not of
    quantised copies)."""
    files = [f for c in ("text_encoder", "unet", "vae_decoder")
             for f in bundle.model(c, "fp32").files]  # fmt: skip
    return sum(bundle.manifest.files[f].bytes for f in files) / GiB


def _row(spec: dict) -> dict:
    """Run one spec in a fresh child process; its result, or the error it died of."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
    )
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {**spec, "error": last[:120]}
    return {**spec, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    """Measure every row and print the table (and its JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgediff-sd15"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024])
    parser.add_argument("--decode-size", type=int, default=2048)
    parser.add_argument(
        "--decode-passes",
        type=int,
        default=8,
        help="passes of the tiled decode (its memory is one tile's at any count; 1 = plain tiles)",
    )
    parser.add_argument("--modes", nargs="+", default=["low", "balanced", "fast"])
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also a balanced row per size with the bundle's INT8 U-Net and VAE decoder "
        "(made beforehand with edgediff calibrate and quantize: the error says how)",
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        run = child_diffusers if spec["engine"] == "diffusers" else child_edgediff
        print(json.dumps(run(spec)))
        return

    from edgediff.bench.sd15 import prepare_sd15
    from edgediff.bundle.reader import Bundle

    checkpoint, bundle, _ = prepare_sd15(args.work)
    opened = Bundle.open(bundle)
    weights = _fp32_weight_gib(opened)
    if args.int8 and "int8" not in opened.manifest.components["unet"].models:
        parser.error(
            f"{bundle} has no INT8 U-Net: make it first with `edgediff calibrate {bundle} "
            "--samples 2 --batch-size 1 --steps 4 --guidance 7.5 --height 256 --width 256` "
            f"and `edgediff quantize {bundle} --components unet,vae_decoder --keep none "
            "--target cpu`"
        )
    common = {"steps": args.steps, "guidance": args.guidance, "threads": args.threads}
    specs = []
    for size in args.sizes:
        for memory in args.modes:
            specs.append({"engine": "edgediff", "memory": memory, "size": size,
                          "bundle": str(bundle), **common})  # fmt: skip
        if args.int8:
            specs.append({"engine": "edgediff", "memory": "balanced", "size": size,
                          "precision": "int8", "bundle": str(bundle), **common})  # fmt: skip
        if not args.no_diffusers:
            specs.append({"engine": "diffusers", "size": size, "checkpoint": str(checkpoint),
                          **common})  # fmt: skip
    if args.decode_size:
        specs.append({"engine": "edgediff", "memory": "low", "size": args.decode_size,
                      "bundle": str(bundle), "decode_only": True, "passes": args.decode_passes,
                      **common})  # fmt: skip
    rows = []
    for spec in specs:
        row = _row(spec)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"fp32 weights (text encoder + U-Net + VAE decoder): {weights:.2f} GiB; "
          f"{args.steps} steps, guidance {args.guidance:g}, {args.threads} threads")  # fmt: skip
    print(
        "| size | engine | mode | peak RSS GiB | × weights | estimate GiB | s/image | "
        "diffusers ÷ edgediff time | edgediff ÷ diffusers RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    theirs = {r["size"]: r for r in rows if r["engine"] == "diffusers" and "error" not in r}
    for r in rows:
        what = r.get("memory", "") + (f", {r['precision']}" if r.get("precision") else "")
        if r.get("decode_only"):
            what = f"decode only, tiled, {r['passes']} pass{'es' if r['passes'] > 1 else ''}"
        if "error" in r:
            print(f"| {r['size']}² | {r['engine']} | {what} | failed: {r['error']} |")
            continue
        ref = theirs.get(r["size"])
        faster = f"{ref['seconds'] / r['seconds']:.2f}×" if ref and r is not ref else ""
        smaller = f"{r['peak_gib'] / ref['peak_gib']:.2f}" if ref and r is not ref else ""
        if r.get("vae_tiled") and not r.get("decode_only"):
            what += " (VAE tiled)"
        estimate = f"{r['estimate_gib']:.2f}" if "estimate_gib" in r else ""
        print(f"| {r['size']}² | {r['engine']} | {what} | {r['peak_gib']:.2f} | "
              f"{r['peak_gib'] / weights:.2f} | {estimate} | {r['seconds']:.1f} | {faster} | "
              f"{smaller} |")  # fmt: skip


if __name__ == "__main__":
    main()
