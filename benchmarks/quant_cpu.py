"""INT8 vs fp32 U-Net on ONNX Runtime CPU: latency, profile, memory, size, in one run.

Prints, measured side by side in this one process tree, for one U-Net call at batch 2 (one
prompt with classifier-free guidance):
  * the shipped shapes U-Net (16x16 latents) and a random-weight Stable Diffusion 1.5 U-Net
    (32x32 latents, i.e. 256x256 images);
  * for several Q/DQ placements: fp32 and INT8 median latency (timed interleaved, so machine
    load hits both alike), their ratio, the peak RSS of a fresh process that loads and runs
    each model, and the INT8/fp32 file size ratio;
  * ONNX Runtime profiles of every model: time per op type, and a split of each INT8 model's
    time into integer kernels, Quantize/Dequantize overhead and convolutions/matmuls that
    stayed float, so a small or negative gain can be traced to its cause.

    python benchmarks/quant_cpu.py --work /work/quantbench [--threads 2] [--runs 20] [--skip-sd15]

Inputs are real recorded U-Net feeds: the shapes bundle is calibrated with the shipped prompts,
the SD 1.5 bundle (made by edgediff.bench.sd15.prepare_sd15, ~12 GB disk) samples a few prompts
at 256x256.
Quantising the SD U-Net peaks near 14 GB of memory; every heavy step runs in a child process
of its own, one at a time. Quantised models and recordings are kept in --work and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# Placement name -> what it quantises. "cpu" is `edgediff quantize --target cpu` (uint8
# asymmetric activations, 7-bit int8 weights: what ORT's fast x86 kernels take); the others
# are edgediff's TensorRT-compatible int8 settings with one thing changed. "s8ok" is not a
# model of its own: it runs the default model with ORT's session.qdqisint8allowed=1.
# Without it ORT on x86 fuses only the int8 Q/DQ groups it can turn into uint8 ones, leaving
# e.g. 1x1 and strided convolutions, linear layers and half the matmuls float behind run-time
# weight Dequantize.
PLACEMENTS = {
    "default": "Conv+MatMul+Gemm, symmetric s8, float bias (edgediff int8)",
    "s8ok": "default model, ORT session option session.qdqisint8allowed=1",
    "conv": "Conv only",
    "bias32": "Conv+MatMul+Gemm, int32-quantised bias",
    "cpu": "uint8 asymmetric activations, 7-bit int8 weights (edgediff --target cpu)",
}
MODEL_OF = {"s8ok": "default"}  # placements that reuse another placement's model file
SESSION_CONFIG = {"s8ok": {"session.qdqisint8allowed": "1"}}
SD15_PROMPTS = ("a photo of an astronaut riding a horse", "a watercolor lighthouse at dusk")
SD15_STEPS, SD15_GUIDANCE, SD15_SIZE = 4, 7.5, 256
SHAPES_SAMPLES, SHAPES_STEPS = 32, 8
# Op types by what they mean for INT8 speed (names as ORT's profiler reports kernels).
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
INT8_OPS = {
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "ConvInteger",
    "QGemm",
    "DynamicQuantizeMatMul",
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearConcat",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearLeakyRelu",
}
FLOAT_GEMM_OPS = {
    "Conv",
    "FusedConv",
    "NhwcFusedConv",
    "MatMul",
    "FusedMatMul",
    "Gemm",
    "FusedGemm",
}


@dataclasses.dataclass(frozen=True)
class Model:
    """One fp32 U-Net and the recorded calls it is calibrated with and timed on."""

    name: str
    fp32: Path
    inputs: dict[str, Path]  # input name -> .npy stacked over recorded calls
    work: Path  # where its int8 variants go


@dataclasses.dataclass(frozen=True)
class Probe:
    """What a fresh process that loads and runs one model saw."""

    peak_rss_gb: float
    ms_per_run: float
    op_ms: dict[str, float]  # op type -> ms per run (profiler, warm-up excluded)
    op_count: dict[str, int]  # op type -> kernels per run


# ------------------------------------------------------------------ child processes


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) in a fresh spawned process: own peak RSS, memory returned on exit."""
    # spawn, not fork: the child starts without this process's arrays or ORT state.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def session(
    path: Path, threads: int, config: dict[str, str] | None = None, profile_dir: Path | None = None
):
    """An ORT CPU session as edgediff's runtime makes one, plus config entries and profiling."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / path.parent.name)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(sess, inputs: dict[str, Path], call: int) -> dict[str, np.ndarray]:
    """Recorded call `call`, cast to the dtypes the model declares."""
    from edgediff.calibration.quantize import RecordedInputs

    feeds = RecordedInputs(inputs).feeds(call)
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16}
    return {
        i.name: feeds[i.name].astype(types.get(i.type, feeds[i.name].dtype))
        for i in sess.get_inputs()
    }


def parse_profile(path: Path) -> tuple[dict[str, float], dict[str, int], int]:
    """Node time (ms) and kernel count per op type, per run, skipping the first (warm-up) run."""
    events = json.loads(path.read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warm_end = runs[0]["ts"] + runs[0]["dur"]
    timed = len(runs) - 1
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or e["ts"] < warm_end:
            continue
        op = e.get("args", {}).get("op_name", "?")
        total[op] += e["dur"] / 1000  # profiler durations are microseconds
        if e["name"].endswith("_kernel_time"):  # fence events share the op name
            count[op] += 1
    return (
        {op: t / timed for op, t in total.items()},
        {op: n // timed for op, n in count.items()},
        timed,
    )


def probe(
    path: Path, config: dict[str, str], inputs: dict[str, Path], call: int, threads: int, runs: int
) -> Probe:
    """(child) Load one model with profiling on, run it 1 + runs times, report memory and ops."""
    import resource

    with tempfile.TemporaryDirectory(prefix="quant-cpu-prof-") as tmp:
        sess = session(path, threads, config, Path(tmp))
        feeds = feeds_for(sess, inputs, call)
        sess.run(None, feeds)  # warm-up: one-time allocations, excluded from the profile
        start = time.perf_counter()
        for _ in range(runs):
            sess.run(None, feeds)
        ms = (time.perf_counter() - start) / runs * 1000
        op_ms, op_count, _ = parse_profile(Path(sess.end_profiling()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return Probe(peak, ms, op_ms, op_count)


def time_pair(
    fp32: Path,
    int8: Path,
    config: dict[str, str],
    inputs: dict[str, Path],
    call: int,
    threads: int,
    runs: int,
) -> tuple[float, float, int]:
    """(child) Median ms of fp32 and int8, timed in alternating blocks; also runs per model."""
    sessions = [session(fp32, threads), session(int8, threads, config)]
    feeds = feeds_for(sessions[0], inputs, call)
    for s in sessions:  # warm-up, and a latency estimate to size the runs
        for _ in range(3):
            s.run(None, feeds)
    start = time.perf_counter()
    sessions[0].run(None, feeds)
    call_s = time.perf_counter() - start
    # Tiny models: >= 3 s per model so the median is not ruled by timer and scheduler noise.
    runs = max(runs, min(2000, math.ceil(3.0 / call_s)))
    block = max(1, runs // 20)  # ~20 alternations: load drifts hit both alike
    seconds: list[list[float]] = [[], []]
    while len(seconds[1]) < runs:
        for s, out in zip(sessions, seconds, strict=True):
            for _ in range(min(block, runs - len(out))):
                start = time.perf_counter()
                s.run(None, feeds)
                out.append(time.perf_counter() - start)
    return statistics.median(seconds[0]) * 1000, statistics.median(seconds[1]) * 1000, runs


def quantize(model: Model, outs: dict[str, Path]) -> dict[str, float]:
    """(child) Write each placement's int8 model; returns seconds per placement."""

    from edgediff.calibration.quantize import (
        Quantizer,
        RecordedInputs,
        settings_for,
    )

    # quantize_static's pre-processing advice would interleave with the report (this is a
    # child process, so the global logging level is ours to change).
    logging.getLogger().setLevel(logging.ERROR)
    int8 = settings_for("int8")
    variants = {
        "default": int8,
        "conv": dataclasses.replace(int8, op_types=("Conv",)),
        "bias32": dataclasses.replace(int8, quantize_bias=True),
        "cpu": settings_for("int8", "cpu"),
    }
    seconds = {}
    with Quantizer(model.fp32, RecordedInputs(model.inputs), int8) as q:
        # The first write calibrates (MinMax ranges are cached); the others reuse the ranges.
        for name, out in outs.items():
            out.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            q.write(out, settings=variants[name])
            seconds[name] = time.perf_counter() - start
            (out.parent / "done").touch()  # written last: a half-written model is redone
            print(f"  quantised {model.name}/{name} in {seconds[name]:.0f} s", flush=True)
    return seconds


# ------------------------------------------------------------------ preparing the models


def prepare_shapes(work: Path) -> Model:
    """Copy of the shipped bundle, calibrated with the shipped prompts at U-Net batch 2."""
    from edgediff.bundle.reader import Bundle
    from edgediff.calibration.capture import calibrate, calibration_record
    from edgediff.calibration.prompts import read_prompts
    from edgediff.runtime.pipeline import default_bundle

    copy = work / "shapes"
    if not (copy / "manifest.json").exists():
        shutil.copytree(default_bundle(), copy)
    record = Bundle.open(copy).manifest.calibration
    # The shipped bundle may already carry calibration data recorded at another batch size:
    # batch_size=1 makes each recorded U-Net call one prompt with CFG, the shape we time.
    if record is None or record.batch_size != 1:
        in_child(calibrate, copy, read_prompts(), SHAPES_SAMPLES, SHAPES_STEPS, None, 0, 1, True)
    bundle = Bundle.open(copy)
    inputs = calibration_record(bundle, "unet")
    fp32 = bundle.path(bundle.model("unet", "fp32").file)
    return Model("shapes", fp32, inputs, work / "shapes-int8")


def record_sd15(bundle: Path, out: Path, threads: int) -> None:
    """(child) Record the fp32 pipeline's U-Net feeds at 256x256, one prompt per call."""
    from edgediff.calibration.capture import recording
    from edgediff.runtime import Pipeline
    from edgediff.runtime.backends.onnxruntime import OrtBackend

    backend = OrtBackend("ort-cpu", threads=threads)
    pipe = Pipeline.load(bundle, backend=backend, precision="fp32", verify=False)
    with recording(pipe) as calls:
        for seed, prompt in enumerate(SD15_PROMPTS):  # one prompt at a time: U-Net batch 2
            pipe(
                prompt,
                num_inference_steps=SD15_STEPS,
                guidance_scale=SD15_GUIDANCE,
                height=SD15_SIZE,
                width=SD15_SIZE,
                seed=seed,
                output_type="latent",
            )
    out.mkdir(parents=True, exist_ok=True)
    for key in calls["unet"][0]:
        np.save(out / f"{key}.npy", np.stack([c[key] for c in calls["unet"]]))
    (out / "done").touch()


def prepare_sd15(work: Path, sd15_work: Path, threads: int) -> Model:
    """Random SD 1.5 bundle (edgediff.bench.sd15) and recorded 32x32-latent U-Net feeds."""
    from edgediff.bench.sd15 import prepare_sd15 as build_sd15
    from edgediff.bundle.reader import Bundle

    _, bundle, _ = build_sd15(sd15_work)
    calib = work / "sd15-calib"
    if not (calib / "done").exists():
        start = time.perf_counter()
        in_child(record_sd15, bundle, calib, threads)
        print(f"  recorded SD 1.5 U-Net calls in {time.perf_counter() - start:.0f} s")
    inputs = {p.stem: p for p in sorted(calib.glob("*.npy"))}
    opened = Bundle.open(bundle)
    fp32 = opened.path(opened.model("unet", "fp32").file)
    return Model("sd15", fp32, inputs, work / "sd15-int8")


# ------------------------------------------------------------------ measuring and reporting


def model_bytes(path: Path) -> int:
    """Size of an ONNX file plus its external data file, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def breakdown(p: Probe) -> str:
    """Where a model's time goes by what the ops mean for INT8, naming ops that stayed float."""
    groups = {"int8 kernels": INT8_OPS, "Q/DQ": QDQ_OPS, "float conv/matmul": FLOAT_GEMM_OPS}
    parts, rest = [], dict(p.op_ms)
    for label, ops in groups.items():
        ms = sum(rest.pop(op) for op in ops if op in rest)
        n = sum(p.op_count.get(op, 0) for op in ops)
        parts.append(f"{label} {ms:.0f} ms ({n} nodes)")
    floats = [f"{op} x{p.op_count[op]}" for op in sorted(FLOAT_GEMM_OPS) if p.op_count.get(op)]
    parts.append(f"other {sum(rest.values()):.0f} ms")
    return ", ".join(parts) + (f"\n       still float: {', '.join(floats)}" if floats else "")


def print_ops(title: str, p: Probe, top: int) -> None:
    """The `top` op types by profiled time, with kernel counts."""
    total = sum(p.op_ms.values())
    print(f"  {title}: {total:.0f} ms in kernels per call, peak RSS {p.peak_rss_gb:.2f} GB")
    for op, ms in sorted(p.op_ms.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {op:<24} {ms:9.1f} ms {100 * ms / total:5.1f} %  x{p.op_count.get(op, 0)}")
    print(f"    -> {breakdown(p)}")


def bench(model: Model, placements: list[str], args: argparse.Namespace) -> list[dict]:
    """Quantise, probe and time one model in every placement; returns table rows."""
    outs = {n: model.work / MODEL_OF.get(n, n) / "model.onnx" for n in placements}
    missing = {MODEL_OF.get(n, n): p for n, p in outs.items() if not (p.parent / "done").exists()}
    if missing:
        in_child(quantize, model, missing)
    recorded = len(np.load(next(iter(model.inputs.values())), mmap_mode="r"))
    call = recorded // 2  # a mid-schedule call: typical activations
    profile_runs = max(1, args.profile_runs)
    base = in_child(probe, model.fp32, {}, model.inputs, call, args.threads, profile_runs)
    shapes = {k: np.load(v, mmap_mode="r").shape[1:] for k, v in model.inputs.items()}
    print(f"\n== {model.name}: one U-Net call, recorded call {call} of {recorded}, {shapes}")
    print("  (profiled kernel times include the profiler's per-node cost: compare shares)")
    print_ops("fp32", base, args.top)
    rows = []
    for name in placements:
        try:
            config = SESSION_CONFIG.get(name, {})
            p = in_child(probe, outs[name], config, model.inputs, call, args.threads, profile_runs)
            t32, t8, runs = in_child(
                time_pair,
                model.fp32,
                outs[name],
                config,
                model.inputs,
                call,
                args.threads,
                args.runs,
            )
        except Exception as e:  # a child killed for memory must not lose the other rows
            print(f"  {name}: FAILED: {type(e).__name__}: {e}")
            continue
        print_ops(f"int8 {name} ({PLACEMENTS[name]})", p, args.top)
        print(
            f"    timed x{runs} interleaved: fp32 {t32:.1f} ms, int8 {t8:.1f} ms, "
            f"speed-up {t32 / t8:.2f}x",
            flush=True,
        )
        rows.append(
            {
                "model": model.name,
                "placement": name,
                "fp32_ms": t32,
                "int8_ms": t8,
                "speedup": t32 / t8,
                "fp32_rss_gb": base.peak_rss_gb,
                "int8_rss_gb": p.peak_rss_gb,
                "size_ratio": model_bytes(outs[name]) / model_bytes(model.fp32),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    """The final plain-text table."""
    head = (
        "model",
        "placement",
        "fp32 ms",
        "int8 ms",
        "speed-up",
        "fp32 RSS GB",
        "int8 RSS GB",
        "size ratio",
    )
    lines = [head] + [
        (
            r["model"],
            r["placement"],
            f"{r['fp32_ms']:.1f}",
            f"{r['int8_ms']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['fp32_rss_gb']:.2f}",
            f"{r['int8_rss_gb']:.2f}",
            f"{r['size_ratio']:.2f}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for k, line in enumerate(lines):
        print(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    """Parse flags, prepare both U-Nets, measure, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/edgediff-quant"),
        help="scratch folder for bundles, recordings and int8 models",
    )
    parser.add_argument(
        "--sd15-work",
        type=Path,
        default=None,
        help="SD 1.5 checkpoint+bundle folder (default WORK/sd15)",
    )
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument(
        "--runs", type=int, default=20, help="timed runs per model (more for fast models)"
    )
    parser.add_argument(
        "--profile-runs", type=int, default=3, help="profiled runs per model, after one warm-up"
    )
    parser.add_argument("--top", type=int, default=10, help="op types listed per profile")
    parser.add_argument(
        "--placements", nargs="+", choices=list(PLACEMENTS), default=list(PLACEMENTS)
    )
    parser.add_argument("--skip-sd15", action="store_true", help="only the shapes U-Net")
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be >= 20")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the children
    args.work.mkdir(parents=True, exist_ok=True)
    # Children print progress too: line buffering keeps the log in order when piped to a file.
    sys.stdout.reconfigure(line_buffering=True)
    start = time.perf_counter()

    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, {args.threads} threads, CPU: {cpu_name()}")
    for name, what in PLACEMENTS.items():
        print(f"  {name:<8} {what}")
    rows = bench(prepare_shapes(args.work), args.placements, args)
    if not args.skip_sd15:
        sd15 = prepare_sd15(args.work, args.sd15_work or args.work / "sd15", args.threads)
        rows += bench(sd15, args.placements, args)
    print()
    print_table(rows)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


def cpu_name() -> str:
    """CPU model and whether it has AVX-512 VNNI / AVX-VNNI (fast int8 dot products)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
        "unknown",
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model} ({' '.join(isa) or 'no AVX2'})"


if __name__ == "__main__":
    main()
