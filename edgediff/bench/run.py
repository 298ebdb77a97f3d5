"""`edgediff bench`: measure every configuration, write report.json, report.md and pareto.png.

Each configuration runs in a child process (edgediff.bench.measure) so its peak memory is its
own. Rows are written to report.json as they finish, with the outputs they were scored on
kept under OUT/outputs/, so a bench that is interrupted and started again with the same
settings measures only what is missing.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgediff import __version__
from edgediff.bench.child import run_python
from edgediff.bench.configs import Config
from edgediff.bundle.files import atomic_path, atomic_write_text, sha256_file
from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import MANIFEST, TINY_DECODER
from edgediff.errors import InputError
from edgediff.runtime.guidance import is_guided
from edgediff.runtime.request import recommended_guidance

FORMAT = "edgediff-bench"
FORMAT_VERSION = 1
ARCHITECTURES = ("shapes", "sd15")
DIFFUSERS = "diffusers-torch"  # the backend name of the PyTorch reference rows (sd15)


@dataclass(frozen=True)
class BenchSettings:
    """Everything besides the configurations that a row's numbers depend on."""

    architecture: str = "shapes"
    prompts: int = 64
    runs: int = 10
    warmup: int = 2
    seed: int = 0
    guidance: float | None = None  # None: the bundle's recommended scale
    height: int | None = None
    width: int | None = None
    batch_size: int = 16


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import onnxruntime

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "edgediff": __version__,
    }


def prompts_for(settings: BenchSettings) -> list[str]:
    """The prompts every configuration generates: shapes eval captions, or one SD prompt."""
    if settings.architecture == "sd15":
        return ["a photo of an astronaut riding a horse on mars"]
    from edgediff.data.shapes import canonical_caption, eval_prompts

    return [canonical_caption(a) for a in eval_prompts(settings.prompts)]


def _outputs_path(out: Path, config: Config) -> Path:
    return out / "outputs" / (config.id.replace("/", "_") + ".npz")


def measure_in_child(
    bundle: Path,
    config: Config,
    settings: BenchSettings,
    guidance: float,
    prompts: list[str],
    out: Path,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Measure one configuration at `guidance` in a child process; its result, outputs saved
    under out."""
    module = "edgediff.bench.sd15" if config.backend == DIFFUSERS else "edgediff.bench.measure"
    spec = {
        "bundle": str(bundle),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "backend": config.backend,
        "precision": config.precision,
        "steps": config.steps,
        "decoder": config.decoder,
        "guidance": guidance,
        "height": settings.height,
        "width": settings.width,
        "seed": settings.seed,
        "runs": settings.runs,
        "warmup": settings.warmup,
        "batch_size": settings.batch_size,
        "prompts": prompts,
        "outputs": settings.architecture == "shapes",
    }
    final = _outputs_path(out, config)
    with tempfile.TemporaryDirectory() as tmp, atomic_path(final) as outputs:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        run_python(
            ["-m", module, str(spec_path), str(result_path), str(outputs)],
            f"measuring {config.id}",
        )
        result = json.loads(result_path.read_text())
    return result  # (latency-only configurations leave an empty outputs file as a marker)


def accuracy(
    outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], is_reference: bool, scorer
) -> dict[str, Any]:
    """Paired PSNR/SSIM against the reference outputs, and the evaluator's caption scores."""
    from edgediff.metrics.quality import paired_psnr, ssim

    result: dict[str, Any] = {
        "latent_psnr_db": None,  # null: identical to the reference (PSNR is infinite)
        "image_psnr_db": None,
        "image_ssim": 1.0,
    }
    if not is_reference:
        latent = paired_psnr(outputs["latents"], reference["latents"])
        image = paired_psnr(outputs["images"], reference["images"], peak=1.0)
        result.update(
            latent_psnr_db=None if np.isinf(latent) else round(latent, 2),
            image_psnr_db=None if np.isinf(image) else round(image, 2),
            image_ssim=round(ssim(outputs["images"], reference["images"]), 5),
        )
    if scorer is not None:
        result.update(scorer(outputs["images"]))
    return result


def caption_scorer(settings: BenchSettings):
    """A function images -> caption accuracy per attribute and KID, for the shapes model."""
    from edgediff.bench.caption_eval import _REFERENCE_SEED_OFFSET, real_images_for, score
    from edgediff.data.shapes import eval_prompts
    from edgediff.metrics.evaluator import Evaluator
    from edgediff.runtime.images import to_uint8

    evaluator = Evaluator.load()
    attrs = eval_prompts(settings.prompts)
    real = real_images_for(eval_prompts(settings.prompts, _REFERENCE_SEED_OFFSET), 0)

    def scorer(images: np.ndarray) -> dict[str, Any]:
        scores = score(evaluator, to_uint8(images), real, attrs)
        return {
            "caption_accuracy": {k: round(v, 4) for k, v in scores.accuracy.items()},
            "kid": [round(v, 5) for v in scores.kid],
        }

    return scorer


def _header(bundle: Path, settings: BenchSettings) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bundle": str(bundle),
        "bundle_manifest_sha256": sha256_file(bundle / MANIFEST),
        "settings": asdict(settings),
    }


def check_configs(bundle: Bundle, configs: list[Config]) -> None:
    """Raise a one-line error for a backend that cannot run here or a precision the bundle
    lacks, before a single configuration is measured."""
    from edgediff.runtime.backends import get_backend

    for name in dict.fromkeys(c.backend for c in configs):
        get_backend(name).close()
    for config in configs:
        unet = bundle.unet_for(config.steps)
        if config.backend == "trt":
            bundle.engine(unet, config.precision)
        else:
            bundle.model(unet, config.precision)
        if config.decoder == "tiny":
            bundle.model(TINY_DECODER)


def unet_run(bundle: Bundle, config: Config, guidance: float) -> dict[str, Any] | None:
    """Which U-Net a configuration runs, and how many passes each step makes (2 under
    classifier-free guidance, 1 where a distilled U-Net takes the guidance as an input)."""
    if config.backend == DIFFUSERS:
        return None
    component = bundle.unet_for(config.steps)
    passes = 2 if is_guided(guidance) and not bundle.guidance_embedded(component) else 1
    return {"component": component, "passes": passes, "guidance": guidance}


def load_finished(out: Path, header: dict[str, Any], force: bool) -> list[dict[str, Any]]:
    """Rows of an earlier run of the same bench in `out`, to be reused; [] if none."""
    path = out / "report.json"
    if not path.is_file() or force:
        return []
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        old = {}
    same = all(old.get(k) == v for k, v in header.items() if k != "bundle")
    if not same:
        raise InputError(
            f"{path} holds a bench of another bundle or other settings",
            "Pass --force to replace it, or choose another --out",
        )
    return [r for r in old.get("rows", []) if _outputs_path(out, Config(**r["config"])).exists()]


def run_bench(
    bundle: str | Path,
    configs: list[Config],
    settings: BenchSettings,
    out: str | Path,
    force: bool = False,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Measure every configuration (reusing finished rows); write the three report files.

    With `checkpoint` (sd15), diffusers' PyTorch pipeline on it is measured as one more row
    per step count.
    """
    from tqdm.auto import tqdm

    from edgediff.bench.pareto import pyplot
    from edgediff.bench.report import write_markdown, write_plot

    bundle, out = Path(bundle), Path(out)
    opened = Bundle.open(bundle)
    check_configs(opened, configs)  # bad input fails before any measuring
    pyplot()
    header = _header(bundle, settings)
    rows = {r["id"]: r for r in load_finished(out, header, force)}
    report = {**header, "machine": machine(), "rows": []}
    prompts = prompts_for(settings)
    if checkpoint is not None:
        steps = dict.fromkeys(c.steps for c in configs)
        configs = [*configs, *(Config(DIFFUSERS, "fp32", n) for n in steps)]
    scorer = caption_scorer(settings) if settings.architecture == "shapes" else None
    with tqdm(configs, desc="bench", unit="config", disable=not progress) as bar:
        for config in bar:
            bar.set_postfix_str(config.id)
            if config.id not in rows:
                guidance = settings.guidance
                if guidance is None:  # the bundle's, for the U-Net this step count runs
                    guidance = recommended_guidance(opened, config.steps)
                result = measure_in_child(
                    bundle, config, settings, guidance, prompts, out, checkpoint
                )
                rows[config.id] = {
                    "id": config.id,
                    "config": asdict(config),
                    "unet": unet_run(opened, config, guidance),
                    **result,
                }
                if scorer is not None:
                    rows[config.id]["accuracy"] = accuracy(
                        _load(_outputs_path(out, config)),
                        _load(_outputs_path(out, config.reference)),
                        config == config.reference,
                        scorer,
                    )
            report["rows"] = [rows[c.id] for c in configs if c.id in rows]
            atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_markdown(report, out / "report.md")
    write_plot(report, out / "pareto.png")
    return report


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
