"""What distillation buys on ONNX Runtime CPU: teacher with CFG against students, in one run.

Prints, measured side by side in this one process tree:
  * the shapes model (a bundle of an `edgediff distill` run exported with --teacher): images/s
    and caption accuracy (all four attributes right, 256 prompts) for the teacher at 8 and 4
    steps with classifier-free guidance (U-Net batch 2N) and the students at 2 and 1 steps
    (batch N), each with the full and the tiny decoder, fp32 and INT8 U-Nets; speed as a ratio
    to the teacher's 8 guided steps. The rows are `edgediff bench` rows (report in --work).
  * Stable Diffusion 1.5 sizes (random weights, 256x256, 32x32 latents): the same speed ratios
    composed from component times measured interleaved: text encoder at batch 2 and 1, U-Net
    at batch 2 and 1, the VAE decoder and a TAESD-sized tiny decoder (AutoencoderTiny's default
    widths). Accuracy cannot be measured there (the weights are random); the students' extra
    guidance projection (one small Linear into the time embedding) is left out of the U-Net
    time, as its cost is below timing noise on the shapes model.

    python benchmarks/distill_cpu.py --bundle B [--work DIR] [--prompts 256] [--skip-sd15]

(the shipped bundle is such a bundle without the teacher: its 2- and 1-step rows are these.)

The SD 1.5 part builds a random SD 1.5 bundle once (edgediff.bench.sd15.prepare_sd15, ~12 GB
of disk, ~16 GB of memory, ~10 min on 2 cores) and reuses it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

TEACHER_STEPS, STUDENT_STEPS = (8, 4), (2, 1)


def shapes_rows(bundle: Path, work: Path, prompts: int) -> list[dict]:
    """The bench rows of every (steps, decoder, precision) on the shapes bundle."""
    from edgediff.bench.configs import expand
    from edgediff.bench.run import BenchSettings, run_bench
    from edgediff.bundle.reader import Bundle

    opened = Bundle.open(bundle)
    students = [c for c in opened.manifest.components if c.startswith("unet.steps-")]
    if not students or opened.model("unet").distillation is not None:
        raise SystemExit(
            f"{bundle} is not a distilled bundle that keeps its teacher: "
            "edgediff export OUT B --teacher CKPT"
        )
    precisions = [p for p in ("fp32", "int8") if p in opened.manifest.components["unet"].models]
    configs = expand(
        ["ort-cpu"], precisions, [*TEACHER_STEPS, *STUDENT_STEPS], decoders=["full", "tiny"]
    )
    report = run_bench(bundle, configs, BenchSettings(prompts=prompts), work / "shapes-bench")
    return report["rows"]


def print_shapes(rows: list[dict]) -> None:
    """The shapes table: speed relative to the teacher's 8 guided steps, and accuracy."""
    from edgediff.bench.report import unet_label

    base = next(r for r in rows if r["id"] == f"ort-cpu/fp32/{TEACHER_STEPS[0]}")["images_per_s"]
    print("\nshapes model, ORT CPU (images/s: median of timed runs; accuracy: all four right)")
    print(f"{'configuration':24} {'U-Net':28} {'images/s':>9} {'x teacher-8':>11} {'all four':>9}")
    for r in rows:
        acc = r.get("accuracy", {}).get("caption_accuracy", {}).get("all")
        acc_text = "—" if acc is None else f"{100 * acc:.1f} %"
        ratio = r["images_per_s"] / base
        unet = unet_label(r)
        print(f"{r['id']:24} {unet:28} {r['images_per_s']:9.2f} {ratio:10.2f}x {acc_text:>9}")


def tiny_decoder_onnx(work: Path, latent_channels: int) -> Path:
    """A random AutoencoderTiny decoder (TAESD's default widths) as ONNX, made once."""
    path = work / "tiny-decoder" / "model.onnx"
    if path.exists():
        return path
    import torch
    from diffusers import AutoencoderTiny

    tiny = AutoencoderTiny(latent_channels=latent_channels).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    latents = torch.randn(1, latent_channels, 32, 32)
    with torch.no_grad():
        torch.onnx.export(
            tiny.decoder, (latents,), str(path), input_names=["latent_sample"],
            output_names=["sample"], opset_version=18, dynamo=False,
            dynamic_axes={"latent_sample": {0: "batch", 2: "h", 3: "w"}},
        )  # fmt: skip
    return path


def sd15_component_seconds(work: Path, runs: int, threads: int) -> dict[str, float]:
    """Median seconds of each SD 1.5 component call, timed in interleaved rounds."""
    from edgediff.bench.sd15 import prepare_sd15
    from edgediff.bundle.reader import Bundle
    from edgediff.runtime.backends import get_backend

    _, bundle_dir, _ = prepare_sd15(work)
    bundle = Bundle.open(bundle_dir)
    config = bundle.manifest.model
    backend = get_backend("ort-cpu", threads=threads)
    rng = np.random.default_rng(0)
    hidden = config.text_embed_dim
    sessions = {
        "text_encoder": backend.load(bundle.path(bundle.model("text_encoder").file)),
        "unet": backend.load(bundle.path(bundle.model("unet").file)),
        "vae_decoder": backend.load(bundle.path(bundle.model("vae_decoder").file)),
        "tiny_decoder": backend.load(tiny_decoder_onnx(work, config.latent_channels)),
    }

    def latents(batch: int) -> np.ndarray:
        return rng.standard_normal((batch, config.latent_channels, 32, 32), dtype=np.float32)

    calls = {
        f"text_encoder x{b}": (
            "text_encoder", {"input_ids": np.zeros((b, config.max_text_length), np.int64)}
        )
        for b in (1, 2)
    } | {
        f"unet x{b}": (
            "unet",
            {
                "sample": latents(b),
                "timestep": np.full((1,), 500, np.float32),  # one timestep for the batch
                "encoder_hidden_states": rng.standard_normal(
                    (b, config.max_text_length, hidden), dtype=np.float32
                ),
            },
        )
        for b in (1, 2)
    } | {
        "vae_decoder": ("vae_decoder", {"latent_sample": latents(1)}),
        "tiny_decoder": ("tiny_decoder", {"latent_sample": latents(1)}),
    }  # fmt: skip
    seconds = timed_calls(sessions, calls, rounds=runs, repeats=1)
    backend.close()
    return seconds


def timed_calls(sessions: dict, calls: dict, rounds: int, repeats: int) -> dict[str, float]:
    """Median seconds of each call, timed in turns of `repeats` back-to-back runs per call.

    Turns rather than alternating single runs: ORT's idle pool threads spin for a while after
    a run, and on 2 cores another session's spinning threads slowed a short call 5-10x.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds + 1):  # round 0 warms up
        for name, (component, feeds) in calls.items():
            for _ in range(repeats):
                start = time.perf_counter()
                sessions[component].run(feeds)
                if round_:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def decoder_seconds(bundle: Path, threads: int, rounds: int = 6) -> dict[str, float]:
    """The bundle's full and tiny decoders at batch 1, timed side by side."""
    from edgediff.bundle.reader import Bundle
    from edgediff.bundle.schema import TINY_DECODER
    from edgediff.runtime.backends import get_backend

    opened = Bundle.open(bundle)
    config = opened.manifest.model
    latents = np.random.default_rng(0).standard_normal(
        (1, config.latent_channels, config.default_latent, config.default_latent), dtype=np.float32
    )
    backend = get_backend("ort-cpu", threads=threads)
    try:
        components = ("vae_decoder", TINY_DECODER)
        sessions = {c: backend.load(opened.path(opened.model(c).file)) for c in components}
        calls = {c: (c, {"latent_sample": latents}) for c in sessions}
        return timed_calls(sessions, calls, rounds=rounds, repeats=25)
    finally:
        backend.close()


def print_decoders(seconds: dict[str, float]) -> None:
    """Full against tiny decoder."""
    full, tiny = seconds["vae_decoder"], seconds["vae_decoder.tiny"]
    print("\nshapes model decoders, ORT CPU fp32, batch 1 (median of turns of 25 runs)")
    print(f"  full {1000 * full:.2f} ms, tiny {1000 * tiny:.2f} ms: tiny {full / tiny:.2f}x faster")


def print_sd15(seconds: dict[str, float]) -> None:
    """SD 1.5 speed ratios composed from component times."""
    print("\nStable Diffusion 1.5 sizes, random weights, 256x256, ORT CPU fp32 (speed only)")
    for name, s in seconds.items():
        print(f"  {name:16} {1000 * s:9.1f} ms")
    rows = []
    for steps in (*TEACHER_STEPS, *STUDENT_STEPS):
        guided = steps in TEACHER_STEPS
        batch = 2 if guided else 1
        for decoder in ("vae_decoder", "tiny_decoder"):
            total = (
                seconds[f"text_encoder x{batch}"]
                + steps * seconds[f"unet x{batch}"]
                + seconds[decoder]
            )
            who = "teacher CFG" if guided else "student"
            count = f"{steps} step{'s' if steps > 1 else ''}"
            rows.append((f"{who} {count}, {decoder.split('_')[0]} decoder", total))
    base = rows[0][1]
    print(f"{'configuration':40} {'s/image':>8} {'x teacher-8':>11}")
    for label, total in rows:
        print(f"{label:40} {total:8.2f} {base / total:10.2f}x")


def main() -> None:
    """Run both parts and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="export OUT B --teacher CKPT")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgediff-distill-bench"))
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5, help="SD 1.5 timed rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-sd15", action="store_true")
    args = parser.parse_args()
    print_decoders(decoder_seconds(args.bundle, args.threads))
    print_shapes(shapes_rows(args.bundle, args.work, args.prompts))
    if not args.skip_sd15:
        print_sd15(sd15_component_seconds(args.work / "sd15", args.runs, args.threads))


if __name__ == "__main__":
    main()
