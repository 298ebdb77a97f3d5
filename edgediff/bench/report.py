"""report.md and pareto.png from a bench's report.json contents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgediff.bench.pareto import plot
from edgediff.bundle.files import atomic_path, atomic_write_text


def _ms(row: dict[str, Any], part: str) -> str:
    return f"{1000 * row['latency_s'][part]['median']:.1f}"


def _num(value: Any, fmt: str, none: str = "—") -> str:
    return none if value is None else format(value, fmt)


def unet_label(row: dict[str, Any]) -> str:
    """'unet.steps-2, 1 pass, w 5' / 'unet, CFG 2 passes, w 3': what a row's U-Net did each
    step, at which guidance scale."""
    unet = row.get("unet")
    if unet is None:
        return "—"
    passes = "1 pass" if unet["passes"] == 1 else f"CFG {unet['passes']} passes"
    scale = f", w {unet['guidance']:g}" if "guidance" in unet else ""  # older reports lack it
    return f"{unet['component']}, {passes}{scale}"


def _axes(report: dict[str, Any]) -> tuple[str, list[float], str, bool]:
    """The plot's y values: caption accuracy where the shapes evaluator scored the images,
    peak memory (lower is better) for latency-only benches."""
    rows = report["rows"]
    if all("accuracy" in r for r in rows):
        values = [100 * r["accuracy"]["caption_accuracy"]["all"] for r in rows]
        return "caption accuracy, all four attributes right (%)", values, "accuracy", True
    values = [r["peak_rss_mb"] / 1024 for r in rows]
    return "peak memory (GB, lower is better)", values, "memory", False


def _guidance(scale: float | None) -> str:
    if scale is None:
        return "as the bundle recommends for each row's U-Net (the U-Net column)"
    return f"{scale:g}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: settings, machine, one table row per configuration."""
    s, m = report["settings"], report["machine"]
    scored = all("accuracy" in r for r in report["rows"])
    lines = [
        "# edgediff bench",
        "",
        f"Bundle `{report['bundle']}`, {s['architecture']} architecture. {s['prompts']} prompts "
        f"for accuracy, guidance {_guidance(s['guidance'])}, seed {s['seed']}; latency over "
        f"{s['runs']} runs of one image after {s['warmup']} warm-up run(s).",
        "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpus']} CPUs, Python {m['python']}, "
        f"ONNX Runtime {m['onnxruntime']}, edgediff {m['edgediff']}.",
        "",
    ]
    header = [
        "config (backend/precision/steps)",
        "U-Net a step",
        "s/image (median)",
        "p90",
        "images/s",
        "text enc. ms",
        "U-Net ms/step",
        "VAE dec. ms",
        "peak RSS MB",
        "GPU MB",
        "files MB",
    ]
    if scored:
        header += ["latent PSNR dB", "image PSNR dB", "SSIM", "captions all-right", "KID"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["rows"]:
        cells = [
            f"`{r['id']}`",
            unet_label(r),
            f"{r['latency_s']['end_to_end']['median']:.3f}",
            f"{r['latency_s']['end_to_end']['p90']:.3f}",
            f"{r['images_per_s']:.2f}",
            _ms(r, "text_encoder"),
            _ms(r, "unet_step"),
            _ms(r, "vae_decoder"),
            f"{r['peak_rss_mb']:.0f}",
            _num(r["gpu_memory_mb"], ".0f"),
            f"{sum(r['file_mb'].values()):.1f}",
        ]
        if scored:
            a = r["accuracy"]
            cells += [
                _num(a["latent_psnr_db"], ".1f", "= ref"),
                _num(a["image_psnr_db"], ".1f", "= ref"),
                f"{a['image_ssim']:.4f}",
                f"{100 * a['caption_accuracy']['all']:.1f} %",
                f"{a['kid'][0]:.4f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "How to read it: PSNR and SSIM compare each configuration's final latents and images "
        "with those of fp32 on ONNX Runtime's CPU provider at the same prompt, seed and step "
        "count (`= ref`: identical), so they show what a precision or backend costs, not what "
        "fewer steps cost. The caption accuracy (the evaluator reading colour, shape, size and "
        "position off each image) and KID (distance of its features to real drawings, lower is "
        "better) show both."
        if scored
        else "Latency and memory only: random weights make accuracy meaningless at these sizes.",
        "",
        "![accuracy against latency](pareto.png)",
        "",
    ]
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """Write report.md all-or-nothing."""
    atomic_write_text(path, markdown(report))


def _plot_label(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The row's id, and when the bench mixes guided and one-pass U-Nets, which this is."""
    passes = {r["unet"]["passes"] for r in rows if r.get("unet")}
    if len(passes) < 2 or not row.get("unet"):
        return row["id"]
    return f"{row['id']} ({'1 pass' if row['unet']['passes'] == 1 else 'CFG'})"


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Write pareto.png: end-to-end latency against accuracy (or memory), front drawn."""
    rows = report["rows"]
    y_label, ys, what, higher = _axes(report)
    points = [(r["latency_s"]["end_to_end"]["median"], y) for r, y in zip(rows, ys, strict=True)]
    with atomic_path(path) as tmp:
        plot(
            [_plot_label(r, rows) for r in rows],
            points,
            tmp,
            x_label="seconds per image, end to end (median, log scale)",
            y_label=y_label,
            title=f"{report['settings']['architecture']}: {what} against latency",
            higher_is_better=higher,
        )
