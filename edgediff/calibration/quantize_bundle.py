"""`edgediff quantize`: Q/DQ models of a bundle's components, with measured mixed precision.

For each component: calibrate on the recorded inputs, find the layers whose quantisation
costs the most (sensitivity along real trajectories), keep the fewest of them in float that
bring the whole model to the target PSNR, write `<component>/model.<precision>.onnx` and its
sensitivity table beside it, and list both in the manifest.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from edgediff.bundle.edit import BundleEdit, edit
from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import QuantizationRecord, QuantSettings, kind_of
from edgediff.calibration.capture import RECORDED, calibration_prompts, calibration_record
from edgediff.calibration.quantize import (
    Quantizer,
    RecordedInputs,
    quantizer_version,
    require_onnx,
    settings_for,
)
from edgediff.calibration.sensitivity import (
    KeepSearch,
    LayerScore,
    as_json,
    choose_keep,
    layer_groups,
    layer_sensitivity,
    make_probe,
    measure,
    quantizable_nodes,
    resolve_keep,
)
from edgediff.errors import BundleError, InputError
from edgediff.runtime.pipeline import Pipeline
from edgediff.tolerances import QUANT_TARGET_PSNR_DB

QUANTIZABLE = RECORDED  # a component can be quantised if calibration recorded its inputs
DEFAULT_PROBE_PROMPTS = 8
_PROBE_SEED_OFFSET = 1  # probes sample other noise than the calibration did


@dataclass(frozen=True)
class ComponentResult:
    """What quantising one component wrote and measured."""

    component: str
    file: str
    external_data: tuple[str, ...]
    kept: list[str]
    psnr_db: float
    met_target: bool
    fp32_bytes: int
    bytes: int
    fp32_seconds: float
    seconds: float
    sensitivity: list[LayerScore] | None

    @property
    def size_ratio(self) -> float:
        """Quantised file size over fp32."""
        return self.bytes / self.fp32_bytes

    @property
    def speedup(self) -> float:
        """fp32 latency over quantised latency, one call on ONNX Runtime CPU."""
        return self.fp32_seconds / self.seconds


def _split_names(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_components(text: str) -> list[str]:
    """'unet,text_encoder' -> names, each checked (variants such as unet.steps-2 too)."""
    names = _split_names(text)
    for name in names:
        if kind_of(name) not in QUANTIZABLE:
            raise InputError(
                f"unknown component '{name}'",
                f"Quantisable components: {', '.join(QUANTIZABLE)} (or a U-Net variant such as "
                "unet.steps-2)",
            )
    if not names:
        raise InputError("no component named", f"Name some of: {', '.join(QUANTIZABLE)}")
    return names


def parse_keep(text: str) -> str | list[str]:
    """'auto', 'none' or a comma-separated list of layer names."""
    if text in ("auto", "none"):
        return text
    names = _split_names(text)
    if not names:
        raise InputError("--keep names no layer", "Use auto, none, or layer names")
    return names


def quantize_bundle(
    bundle_dir: str | Path,
    precision: str,
    components: list[str],
    keep: str | list[str] = "auto",
    target_psnr: float = QUANT_TARGET_PSNR_DB,
    probe_prompts: int = DEFAULT_PROBE_PROMPTS,
    force: bool = False,
    progress: bool = False,
    target: str = "tensorrt",
) -> list[ComponentResult]:
    """Quantise `components` of a calibrated bundle; write models, tables and the manifest."""
    require_onnx()
    settings = settings_for(precision, target)
    if probe_prompts < 1:
        raise InputError(f"--probe-prompts must be >= 1, got {probe_prompts}")
    with edit(bundle_dir, "edgediff quantize") as tx:
        for component in components:
            _check_can_quantize(tx.bundle, component, precision, force)
        with Pipeline.load(tx.bundle, precision="fp32") as pipeline:
            results = [
                _quantize_component(
                    tx, pipeline, component, settings, keep, target_psnr, probe_prompts, progress
                )
                for component in components
            ]
        _record(tx, settings, results, target_psnr)
    return results


def _quantize_component(
    tx: BundleEdit,
    pipeline: Pipeline,
    component: str,
    settings: QuantSettings,
    keep: str | list[str],
    target_psnr: float,
    probe_prompts: int,
    progress: bool,
) -> ComponentResult:
    bundle = tx.bundle
    calibration = bundle.manifest.calibration
    prompts = calibration_prompts(bundle)[:probe_prompts]
    probe = make_probe(
        pipeline, component, prompts, calibration.seed + _PROBE_SEED_OFFSET, calibration
    )
    fp32 = bundle.path(bundle.model(component, "fp32").file)
    groups = layer_groups(quantizable_nodes(fp32))
    # A fixed keep list resolves before any work, so a wrong name fails at once.
    layers = [] if keep in ("auto", "none") else list(keep)
    kept_nodes = resolve_keep(layers, groups)
    inputs = RecordedInputs(calibration_record(bundle, component))
    with (
        Quantizer(fp32, inputs, settings) as quantizer,
        tempfile.TemporaryDirectory(prefix="edgediff-trial-") as tmp,
    ):
        trial = Path(tmp) / "trial.onnx"

        def score(keep_nodes: list[str] = (), only: list[str] | None = None) -> float:
            quantizer.write(trial, keep=keep_nodes, only=only)
            return measure(pipeline, component, trial, probe)

        ranked = None
        if keep == "auto":
            ranked = layer_sensitivity(groups, lambda nodes: score(only=nodes), progress)
            search = choose_keep(
                ranked, lambda chosen: score(resolve_keep(chosen, groups)), target_psnr, progress
            )
            kept_nodes = resolve_keep(search.keep, groups)
        else:
            db = score(kept_nodes)
            search = KeepSearch(layers, db, db >= target_psnr, [{"keep": layers, "psnr_db": db}])
        return _write(
            tx, pipeline, component, quantizer, search, ranked, kept_nodes, inputs, target_psnr
        )


def _check_can_quantize(bundle: Bundle, component: str, precision: str, force: bool) -> None:
    comp = bundle.manifest.components.get(component)
    if comp is None:
        raise BundleError(f"the bundle has no {component}", "Quantise components it has")
    if "fp32" not in comp.models:
        raise BundleError(
            f"the bundle's {component} has no fp32 model to quantise",
            "Export the checkpoint without --fp16 and quantise that bundle",
        )
    if precision in comp.models and not force:
        raise BundleError(
            f"the bundle's {component} is already quantised to {precision}",
            "Pass --force to quantise it again (the old model is replaced once the new one "
            "is written)",
        )
    for rel in comp.models["fp32"].external_data:
        # onnx refuses to read external weights with more than one link (its guard against
        # hardlink attacks), which would stop the quantiser minutes in.
        if bundle.path(rel).stat().st_nlink > 1:
            raise BundleError(
                f"{rel} has more than one hard link, and onnx refuses to read weights so linked",
                "Copy the bundle with `cp -r` (not `cp -al`), or quantise the original",
            )
    calibration_record(bundle, component)  # a clear error if nothing was recorded


def _write(
    tx: BundleEdit,
    pipeline: Pipeline,
    component: str,
    quantizer: Quantizer,
    search: KeepSearch,
    ranked: list[LayerScore] | None,
    kept_nodes: list[str],
    inputs: RecordedInputs,
    target_psnr: float,
) -> ComponentResult:
    """Write the final model and its sensitivity table; measure size and latency."""
    from edgediff.metrics.timing import measure_latency

    bundle = tx.bundle
    precision = quantizer.settings.precision
    rel = f"{component}/model.{precision}.onnx"
    # The same keep list quantises to the same model the search scored: no second measurement.
    quantizer.write(tx.path(rel), keep=kept_nodes)
    data = rel + ".data"
    external = (data,) if tx.is_staged(data) else ()
    feeds = inputs.feeds(0)
    fp32_session = pipeline.session(component)
    quantized_session = pipeline.backend.load(tx.read_path(rel))
    try:
        fp32_latency = measure_latency(lambda: fp32_session.run(feeds), runs=10)
        quantized_latency = measure_latency(lambda: quantized_session.run(feeds), runs=10)
    finally:
        quantized_session.close()
    table = {
        "component": component,
        "precision": precision,
        "target_psnr_db": target_psnr,
        "psnr_db": search.psnr_db,
        "kept": list(search.keep),
        "layers": as_json(ranked) if ranked is not None else None,
        "keep_search": search.trials,
    }
    tx.write_file(sensitivity_file(component, precision), json.dumps(table, indent=2) + "\n")
    return ComponentResult(
        component=component,
        file=rel,
        external_data=external,
        kept=list(search.keep),
        psnr_db=search.psnr_db,
        met_target=search.met_target,
        fp32_bytes=sum(
            bundle.path(f).stat().st_size for f in bundle.model(component, "fp32").files
        ),
        bytes=sum(tx.read_path(f).stat().st_size for f in (rel, *external)),
        fp32_seconds=fp32_latency.median,
        seconds=quantized_latency.median,
        sensitivity=ranked,
    )


def sensitivity_file(component: str, precision: str) -> str:
    """Where a component's sensitivity table and keep search are saved in the bundle."""
    return f"{component}/sensitivity.{precision}.json"


def _record(
    tx: BundleEdit, settings: QuantSettings, results: list[ComponentResult], target_psnr: float
) -> None:
    """List the new models and their tables in the manifest."""
    calibration = tx.bundle.manifest.calibration
    for r in results:
        fp32 = tx.bundle.model(r.component, "fp32")
        record = QuantizationRecord(
            quantizer=quantizer_version(),
            settings=settings,
            calibration_prompts_sha256=calibration.prompts_sha256,
            kept_in_float=tuple(r.kept),
            psnr_db=r.psnr_db,
            target_psnr_db=target_psnr,
            measured_on="final latents" if kind_of(r.component) != "vae_decoder" else "images",
            sensitivity=sensitivity_file(r.component, settings.precision),
        )
        entry = replace(
            fp32,
            file=r.file,
            precision=settings.precision,
            external_data=r.external_data,
            verification=None,
            quantization=record,
        )
        tx.put_model(r.component, entry)


def format_results(results: list[ComponentResult], target_psnr: float) -> str:
    """Per component: sensitivity table, then one summary row each."""
    from edgediff.calibration.sensitivity import format_table

    parts = []
    for r in results:
        if r.sensitivity is not None:
            parts.append(
                f"{r.component}: PSNR with one layer quantised alone\n"
                + format_table(r.sensitivity, r.kept)
            )
    header = f"{'component':<14}{'PSNR':>9}{'size':>8}{'speed':>8}  kept in float"
    rows = [header]
    for r in results:
        flag = "" if r.met_target else f" (below the {target_psnr:g} dB target)"
        rows.append(
            f"{r.component:<14}{r.psnr_db:>6.1f} dB{r.size_ratio:>7.2f}x{r.speedup:>7.2f}x  "
            f"{', '.join(r.kept) or '-'}{flag}"
        )
    rows.append(
        "PSNR: paired, final latents (images for vae_decoder) vs fp32; size: file vs fp32; "
        "speed: one call, fp32 time / quantised time, ONNX Runtime CPU"
    )
    return "\n\n".join([*parts, "\n".join(rows)])
