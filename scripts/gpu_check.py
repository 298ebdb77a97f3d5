"""GPU acceptance check: every GPU path on the shipped model, against the CPU, in one table.

    python scripts/gpu_check.py [--out gpu-check] [--runs 5]

On a machine with an NVIDIA GPU (and whichever of onnxruntime-gpu, TensorRT or TensorRT-RTX
with cuda-python is installed) it copies the shipped bundle, builds its TensorRT engines at
fp16 and int8 (and fp8 where the GPU has FP8 and the flavour builds it), generates the same
request with `trt`, `ort-cuda` and `ort-trt`, and compares each image with ONNX Runtime's CPU
provider (PSNR limits from edgediff/tolerances.py). A path whose software is missing is
reported as skipped, with the reason; one that fails is reported with its error, and the
script goes on. Prints a table of seconds per image and writes it to OUT/gpu_check.json.
Exit status: 0 when every path that ran met its limit, 1 otherwise. Takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.bundle.engine_compat import sm_of
from edgediff.engines.plan import FP8_MIN_SM
from edgediff.errors import EdgediffError
from edgediff.metrics.quality import psnr
from edgediff.runtime.pipeline import DEFAULT_BUNDLE, Pipeline
from edgediff.tolerances import GPU_IMAGE_MIN_PSNR_DB

REQUEST = dict(
    prompt=["a big red circle on the left", "a small blue square"], seed=7, output_type="np"
)
IMAGES = len(REQUEST["prompt"])


def gpu() -> tuple[str, str] | None:
    """(name, compute capability) of GPU 0, or None."""
    try:
        from edgediff.runtime.cuda import Cuda

        cuda = Cuda()
        found = cuda.gpu()
        cuda.close()
        return found
    except EdgediffError:
        return None


def timed(pipe: Pipeline, runs: int) -> tuple[np.ndarray, float]:
    """The request's images (after a warm-up call) and the median seconds per image."""
    images = pipe(**REQUEST)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        pipe(**REQUEST)
        seconds.append(time.perf_counter() - start)
    return images, statistics.median(seconds) / IMAGES


def row(backend: str, precision: str, note: str = "") -> dict[str, Any]:
    return {"backend": backend, "precision": precision, "status": "skipped", "note": note}


def measure(
    rows: list[dict], reference: np.ndarray, runs: int, backend: Any, bundle: Path, precision: str
) -> None:
    """Generate with one backend and precision; append its row (never raises)."""
    name = backend if isinstance(backend, str) else backend.name
    label = precision or "fp32"
    limit = GPU_IMAGE_MIN_PSNR_DB.get("fp16" if name == "ort-trt" and label == "fp32" else label)
    entry = row(name, label)
    try:
        with Pipeline.load(bundle, backend=backend, precision=precision) as pipe:
            images, per_image = timed(pipe, runs)
        quality = psnr(images, reference, peak=1.0)
        entry.update(
            s_per_image=round(per_image, 4),
            psnr_db=round(quality, 2),
            limit_db=limit,
            status="pass" if limit is not None and quality >= limit else "FAIL",
        )
    except Exception as e:  # report every path, whatever breaks
        entry.update(status="error", note=str(e).splitlines()[0][:200])
        traceback.print_exc()
    rows.append(entry)
    print(f"  {name:<8} {label:<5} {entry['status']}", flush=True)


def build(bundle: Path, precision: str, capability: str) -> str | None:
    """Build engines at `precision` for this GPU with the installed TensorRT; None or why not."""
    from edgediff.engines.build import build_engines
    from edgediff.engines.plan import BuildRequest
    from edgediff.engines.tensorrt_builder import build_engine, current_platform

    target = current_platform()
    targets = None
    if target.toolkit.builds_ahead_of_time:
        if capability not in target.known_targets:
            return f"{target.toolkit.title} has no target for compute capability {capability}"
        targets = (capability,)
    request = BuildRequest(precision=precision, targets=targets)
    start = time.perf_counter()
    build_engines(bundle, request, target, build_engine, progress=True)
    print(f"  built {precision} engines in {time.perf_counter() - start:.1f} s", flush=True)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--runs", type=int, default=5, help="timed runs per path (after 1)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    found = gpu()
    if found is None:
        print("no NVIDIA GPU usable here (needs a driver and cuda-python); nothing to check")
        return 1
    name, capability = found
    print(f"GPU: {name} (compute capability {capability}), {platform.machine()}")
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.out / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(DEFAULT_BUNDLE, bundle)

    with Pipeline.load(bundle) as cpu:
        reference, cpu_s = timed(cpu, args.runs)
    rows: list[dict[str, Any]] = [
        {"backend": "ort-cpu", "precision": "fp32", "status": "reference", "s_per_image": cpu_s}
    ]

    import onnxruntime

    providers = onnxruntime.get_available_providers()
    for backend, precisions in (("ort-cuda", [None]), ("ort-trt", [None, "int8"])):
        provider = "CUDA" if backend == "ort-cuda" else "Tensorrt"
        if f"{provider}ExecutionProvider" not in providers:
            for p in precisions:
                rows.append(row(backend, p or "fp32", f"onnxruntime lacks {provider}"))
            continue
        for p in precisions:
            measure(rows, reference, args.runs, backend, bundle, p)

    from edgediff.runtime.tensorrt_flavours import installed_flavours

    trt_precisions = ["fp16", "int8"] + (["fp8"] if sm_of(capability) >= FP8_MIN_SM else [])
    if not installed_flavours():
        for p in trt_precisions:
            rows.append(row("trt", p, "neither TensorRT nor TensorRT-RTX is installed"))
    else:
        if "fp8" in trt_precisions:
            from edgediff.calibration.quantize_bundle import quantize_bundle

            quantize_bundle(bundle, "fp8", ["unet"], keep="none", probe_prompts=4, force=True)
        for p in trt_precisions:
            try:
                why_not = build(bundle, p, capability)
            except Exception as e:
                why_not = f"build failed: {str(e).splitlines()[0][:200]}"
                traceback.print_exc()
            if why_not:
                rows.append(row("trt", p, why_not))
                continue
            measure(rows, reference, args.runs, "trt", bundle, p)

    print()
    print(f"{'backend':<9}{'precision':<10}{'s/image':>9}{'PSNR dB':>9}{'limit':>7}  status")
    for r in rows:
        seconds = f"{r['s_per_image']:.4f}" if "s_per_image" in r else "-"
        quality = f"{r['psnr_db']:.1f}" if "psnr_db" in r else "-"
        limit = f"{r['limit_db']:.0f}" if r.get("limit_db") else "-"
        note = f" ({r['note']})" if r.get("note") else ""
        print(
            f"{r['backend']:<9}{r['precision']:<10}{seconds:>9}{quality:>9}{limit:>7}  "
            f"{r['status']}{note}"
        )
    report = {"gpu": name, "compute_capability": capability, "rows": rows}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    ran = [r for r in rows if r["status"] in ("pass", "FAIL", "error")]
    return 0 if ran and all(r["status"] == "pass" for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
