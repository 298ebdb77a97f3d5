"""Checkpoint -> bundle folder, all or nothing: export, verify, write side files, manifest last."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgediff.bundle.edit import BundleEdit, check_destination, create
from edgediff.bundle.files import sha256_file
from edgediff.bundle.schema import (
    COMPONENTS,
    DISTILLATION_FILE,
    TINY_DECODER,
    Component,
    DistillationRecord,
    LoraRecord,
    Manifest,
    ModelEntry,
    kind_of,
)
from edgediff.bundle.typed_json import FieldError, decode
from edgediff.errors import ExportError
from edgediff.export.lora import LoraSpec
from edgediff.runtime.request_checks import MAX_GUIDANCE


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def model_index() -> dict[str, Any]:
    """model_index.json as optimum's ORTStableDiffusionPipeline reads it."""
    import diffusers

    return {
        "_class_name": "ORTStableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["optimum", "ORTModelTextEncoder"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["optimum", "ORTModelUnet"],
        "vae_decoder": ["optimum", "ORTModelVaeDecoder"],
        "vae_encoder": ["optimum", "ORTModelVaeEncoder"],
    }


def _write_side_files(tx: BundleEdit, ckpt: Any) -> None:
    """model_index.json, the DDIM scheduler config, each component's config.json (for optimum)."""
    tx.write_file("model_index.json", json.dumps(model_index(), indent=2) + "\n")
    tx.write_file("scheduler/scheduler_config.json", json.dumps(ckpt.scheduler, indent=2) + "\n")
    sources = {
        "text_encoder": "text_encoder",
        "unet": "unet",
        "vae_decoder": "vae",
        "vae_encoder": "vae",
    }
    for component, source in sources.items():
        tx.write_file(f"{component}/config.json", ckpt.configs[source])


def _entry(result: Any, verify: bool) -> ModelEntry:
    """The manifest entry of an exported component; raises if its verification failed."""
    from edgediff.graphs.compare import verification

    if hasattr(result, "problem"):
        raise ExportError(result.problem, result.fix)
    record = verification(result.checks, result.precision) if verify else None
    if record is not None and not record.passed:
        raise ExportError(
            f"verification failed for the {result.component} ({result.precision}): ONNX Runtime "
            f"differs from PyTorch by max rel error {record.max_rel_error:.3g} (max abs "
            f"{record.max_abs_error:.3g}), tolerance {record.rel_tolerance:.3g}",
            "Pass --no-verify to write the bundle anyway (not recommended)",
        )
    return ModelEntry(
        file=result.file,
        precision=result.precision,
        inputs=result.inputs,
        outputs=result.outputs,
        external_data=result.external_data,
        verification=record,
    )


def distillation_of(checkpoint: Path, guidance_embedded: bool) -> DistillationRecord | None:
    """The checkpoint's distillation record (edgediff distill writes it), checked."""
    path = checkpoint / DISTILLATION_FILE
    if not path.is_file():
        if guidance_embedded:
            raise ExportError(
                f"'{checkpoint}' has a U-Net that takes the guidance scale but no "
                f"{DISTILLATION_FILE} saying what it was distilled for",
                "Export the folders `edgediff distill` writes (OUT/steps-N)",
            )
        return None
    try:
        record = decode(DistillationRecord, json.loads(path.read_text()), "", {"steps": 1})
    except (json.JSONDecodeError, UnicodeDecodeError, FieldError) as e:
        raise ExportError(
            f"{path} is not a valid distillation record ({e})",
            "Distil the checkpoint again with `edgediff distill`",
        ) from None
    if record.guidance_embedded != guidance_embedded:
        raise ExportError(
            f"{path} says guidance_embedded={record.guidance_embedded}, but the U-Net "
            f"{'takes' if guidance_embedded else 'does not take'} the guidance scale",
            "Distil the checkpoint again with `edgediff distill`",
        )
    return record


def _jobs(
    ckpt: Any,
    checkpoint: Path,
    root: Path,
    fp16: bool,
    fp16_vae: bool,
    opset: int,
    verify: bool,
    workers: int,
) -> dict[str, Any]:
    """One export job per component, with its verification inputs."""
    import numpy as np

    from edgediff.export.components import VERIFY_PROMPTS, graph_kind, verification_inputs
    from edgediff.export.tokenizer import encode_like_transformers
    from edgediff.export.workers import ComponentJob

    geo = ckpt.model
    prompt_ids = [
        np.array(encode_like_transformers(ckpt.tokenizer, list(p), geo.max_text_length))
        for p in VERIFY_PROMPTS
    ]
    half = {"text_encoder": fp16, "unet": fp16, "vae_decoder": fp16_vae, "vae_encoder": fp16_vae}
    threads = max(1, _available_cpus() // workers) if workers > 1 else 0
    kinds = {c: graph_kind(c, ckpt.guidance_embedded) for c in COMPONENTS}
    return {
        c: ComponentJob(
            component=c,
            kind=kinds[c],
            checkpoint=str(checkpoint),
            bundle_root=str(root),
            model=geo,
            precision="fp16" if half[c] else "fp32",
            opset=opset,
            cases=tuple(verification_inputs(kinds[c], geo, prompt_ids)) if verify else (),
            upcast_attention=ckpt.upcast_attention and c == "unet",
            threads=threads,
        )
        for c in COMPONENTS
    }


def _export_into(
    tx: BundleEdit,
    checkpoint: Path,
    *,
    extra_unets: dict[str, Path],
    tiny_decoder: Path | None,
    recommended_steps: int | None,
    recommended_guidance: float | None,
    fp16: bool,
    fp16_vae: bool,
    opset: int,
    verify: bool,
    progress: bool,
    workers: int,
    origin: Path,
    loras: tuple[LoraRecord, ...],
) -> None:
    from tqdm.auto import tqdm

    from edgediff.export.checkpoint import checkpoint_sha256, load_checkpoint
    from edgediff.export.tokenizer import write_tokenizer
    from edgediff.export.workers import SCRATCH, Helper, run_job

    ckpt = load_checkpoint(checkpoint)
    geo = ckpt.model
    root = tx.staging  # the helper process writes its model there too
    # The cheap files first, so a tokenizer problem surfaces before minutes of tracing.
    tokenizer = write_tokenizer(ckpt.tokenizer, checkpoint / "tokenizer", root, geo.max_text_length)
    _write_side_files(tx, ckpt)
    jobs = _jobs(ckpt, checkpoint, root, fp16, fp16_vae, opset, verify, workers)
    # Handed over one by one and dropped once exported (the VAE serves two components); the
    # U-Net is not among them: it is loaded where it is exported, perhaps in the helper.
    vae = ckpt.modules.pop("vae")
    modules = {"text_encoder": ckpt.modules.pop("text_encoder"), "vae_decoder": vae}
    modules["vae_encoder"] = vae
    del vae
    entries: dict[str, ModelEntry] = {}
    helper = None
    bar = tqdm(total=len(COMPONENTS), desc="export", unit="model", disable=not progress)
    try:
        if workers > 1:
            # The U-Net traces longest: a helper process takes it while this one does the rest.
            try:
                helper = Helper(jobs["unet"])
            except OSError as e:  # no usable interpreter to start: export it here instead
                warnings.warn(f"exporting in one process: {e}", RuntimeWarning, stacklevel=3)
        for component in COMPONENTS:
            if component == "unet" and helper is not None:
                continue
            bar.set_postfix_str(component)
            load = functools.partial(modules.pop, component) if component in modules else None
            entries[component] = _entry(run_job(jobs[component], load), verify)
            bar.update(1)
        # Hash the checkpoint while the helper may still be working.
        # A LoRA-fused copy is exported; the source is the checkpoint it was made from.
        source = {"checkpoint": origin.resolve().name, "sha256": checkpoint_sha256(origin)}
        if helper is not None:
            bar.set_postfix_str("unet")
            entries["unet"] = _entry(helper.result(), verify)
            bar.update(1)
    finally:
        bar.close()
        if helper is not None:
            helper.stop()
    entries["unet"] = replace(
        entries["unet"], distillation=distillation_of(checkpoint, ckpt.guidance_embedded)
    )
    scheduler = ckpt.scheduler
    for name, folder in extra_unets.items():
        if progress:
            tqdm.write(f"export: {name} from {folder}")
        entries[name], theirs = _export_extra_unet(name, folder, jobs["unet"], verify)
        scheduler = _one_scheduler(scheduler, theirs, name)
        source[name] = {"checkpoint": folder.resolve().name, "sha256": checkpoint_sha256(folder)}
    extras = list(extra_unets)
    if tiny_decoder is not None:
        if progress:
            tqdm.write(f"export: {TINY_DECODER} from {tiny_decoder}")
        job = dataclasses.replace(
            jobs["vae_decoder"],
            component=TINY_DECODER,
            kind="vae_decoder_tiny",
            checkpoint=str(tiny_decoder),
        )
        entries[TINY_DECODER] = _entry(run_job(job, None), verify)
        source[TINY_DECODER] = {
            "checkpoint": tiny_decoder.resolve().name,
            "sha256": checkpoint_sha256(tiny_decoder),
        }
        extras.append(TINY_DECODER)
    shutil.rmtree(root / SCRATCH, ignore_errors=True)
    main_student = entries["unet"].distillation
    if recommended_steps is None and main_student is not None:
        # A student as the U-Net serves its own step count best (there is no teacher to fall
        # back on), so that is what generation makes when asked for none.
        recommended_steps = min(main_student.steps)
    tx.set_manifest(
        Manifest(
            model=ckpt.model,
            scheduler=scheduler,
            tokenizer=tokenizer,
            components={
                c: Component(
                    default=entries[c].precision, models={entries[c].precision: entries[c]}
                )
                for c in [*COMPONENTS, *extras]
            },
            files={},  # every file written is hashed in when the edit commits
            source=source,
            recommended_steps=recommended_steps,
            recommended_guidance=recommended_guidance,
            loras=loras,
        )
    )


def _one_scheduler(ours: dict[str, Any], theirs: dict[str, Any], name: str) -> dict[str, Any]:
    """The scheduler config every U-Net of the bundle samples with. Distilled students use the
    "trailing" grid they learnt; a teacher samples on any grid, so it adopts theirs."""
    if {**ours, "timestep_spacing": None} != {**theirs, "timestep_spacing": None}:
        raise ExportError(
            f"the {name} checkpoint's scheduler differs from the first U-Net's beyond its "
            "timestep spacing",
            "One bundle's U-Nets share one scheduler: export students of one distillation",
        )
    return theirs if theirs.get("timestep_spacing") == "trailing" else ours


def _export_extra_unet(
    name: str, folder: Path, base: Any, verify: bool
) -> tuple[ModelEntry, dict[str, Any]]:
    """Another U-Net of the bundle (a student for another step count), exported like the first."""
    from edgediff.export.checkpoint import check_checkpoint, load_checkpoint
    from edgediff.export.components import graph_kind, verification_inputs
    from edgediff.export.workers import run_job

    check_checkpoint(folder)
    ckpt = load_checkpoint(folder)
    kind = graph_kind("unet", ckpt.guidance_embedded)
    # A U-Net's checks take no token ids; the same checks serve every U-Net of one kind.
    if kind == base.kind:
        cases = base.cases
    else:
        cases = tuple(verification_inputs(kind, ckpt.model, [None, None]))
    job = dataclasses.replace(
        base, component=name, kind=kind, checkpoint=str(folder), cases=cases if verify else ()
    )
    entry = _entry(run_job(job, None), verify)
    return replace(
        entry, distillation=distillation_of(folder, ckpt.guidance_embedded)
    ), ckpt.scheduler


def distilled_checkpoints(folder: Path) -> dict[int, Path]:
    """Step count -> student checkpoint of an `edgediff distill` OUT folder ({} if it is not
    one): OUT/steps-N folders that hold a pipeline."""
    found = {}
    for sub in folder.glob("steps-*"):
        count = sub.name.removeprefix("steps-")
        if count.isdigit() and (sub / "model_index.json").is_file():
            found[int(count)] = sub
    return dict(sorted(found.items(), reverse=True))


def shares_text_encoder_and_vae(base: Path, other: Path) -> bool:
    """Whether two checkpoints hold the same text encoder and VAE (weights and configs) and
    tokenize alike (students of one distillation do), so one bundle can serve both U-Nets.
    save_pretrained writes its own bookkeeping into configs: keys starting with "_" and the
    loading flags are not compared."""

    def meaning(folder: Path) -> list:
        found: list = []
        for sub in ("text_encoder", "vae"):
            for path in sorted((folder / sub).glob("*.safetensors")):
                found.append((sub, path.name, sha256_file(path)))
            config = json.loads((folder / sub / "config.json").read_text())
            found.append(
                {k: v for k, v in config.items() if not k.startswith("_") and k not in _LOADING}
            )
        tokenizer = folder / "tokenizer" / "tokenizer.json"
        if tokenizer.is_file():
            found.append(json.loads(tokenizer.read_text()).get("model"))
        for name in ("vocab.json", "merges.txt"):
            path = folder / "tokenizer" / name
            found.append(path.read_text() if path.is_file() else None)
        return found

    return meaning(base) == meaning(other)


# Flags diffusers writes into a saved config about how it was loaded, not what it is.
_LOADING = {"is_local", "local_files_only", "transformers_version"}


@contextlib.contextmanager
def _fused(checkpoint: Path, loras: Sequence[LoraSpec], bundle: Path) -> Iterator[Path]:
    """The checkpoint to export: itself, or a copy with the LoRAs fused, removed after."""
    if not loras:
        yield checkpoint
        return
    from edgediff.export.lora import fuse_into_copy

    bundle.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".edgediff-lora-", dir=bundle.parent))
    try:
        yield fuse_into_copy(checkpoint, list(loras), folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def export_checkpoint(
    checkpoint_dir: str | os.PathLike,
    bundle_dir: str | os.PathLike,
    *,
    fp16: bool = False,
    fp16_vae: bool = False,
    opset: int = 18,
    force: bool = False,
    verify: bool = True,
    progress: bool = True,
    workers: int | None = None,
    extra_unets: dict[str, str | os.PathLike] | None = None,
    tiny_decoder: str | os.PathLike | None = None,
    recommended_steps: int | None = None,
    recommended_guidance: float | None = None,
    loras: Sequence[LoraSpec] = (),
) -> Manifest:
    """Export a diffusers SD checkpoint folder to a verified ONNX bundle folder, all or nothing.

    `loras` are fused into the U-Net and text encoder first (`edgediff.export.lora`), in a copy
    of the checkpoint beside the bundle that is removed after; the manifest records each.

    `extra_unets` adds more U-Nets (component name -> checkpoint folder sharing this one's text
    encoder and VAE), e.g. "unet.steps-2" from `edgediff distill`; `recommended_steps` is what
    generation uses when no step count is asked for, `recommended_guidance` when no guidance scale
    is; `tiny_decoder` (an AutoencoderTiny folder
    from `edgediff distill`) becomes the component vae_decoder.tiny.
    """
    from edgediff.export.checkpoint import check_checkpoint

    checkpoint, bundle = Path(checkpoint_dir), Path(bundle_dir)
    extras = {name: Path(folder) for name, folder in (extra_unets or {}).items()}
    check_destination(bundle, force)
    check_checkpoint(checkpoint)  # the cheap checks, before any folder is created
    for name, folder in extras.items():
        check_checkpoint(folder)
        if kind_of(name) != "unet" or name == "unet":
            raise ExportError(f"'{name}' is not a name for another U-Net", "Use e.g. unet.steps-2")
        if not shares_text_encoder_and_vae(checkpoint, folder):
            raise ExportError(
                f"'{folder}' has another text encoder, tokenizer or VAE than '{checkpoint}'",
                "One bundle's U-Nets must share them: export the students of one distillation",
            )
    tiny = None if tiny_decoder is None else Path(tiny_decoder)
    if tiny is not None and not (tiny / "config.json").is_file():
        raise ExportError(
            f"'{tiny}' is not a tiny decoder folder (no config.json)",
            "Pass OUT/tiny-decoder from `edgediff distill`",
        )
    if recommended_steps is not None and recommended_steps < 1:
        raise ExportError(f"recommended steps must be >= 1, got {recommended_steps}")
    if recommended_guidance is not None and not 0.0 <= recommended_guidance <= MAX_GUIDANCE:
        raise ExportError(
            f"recommended guidance must be a number from 0 to {MAX_GUIDANCE:g}, got "
            f"{recommended_guidance}"
        )
    if workers is None:
        workers = 2 if _available_cpus() >= 2 else 1
    if loras and extras:
        raise ExportError(
            "LoRAs are fused into the checkpoint's U-Net, not into distilled students",
            "Fuse them before distilling (export the fused teacher), or export without --lora",
        )
    records = tuple(LoraRecord(x.path.name, sha256_file(x.path), x.scale) for x in loras)
    with (
        create(bundle, "edgediff export", force) as tx,
        _fused(checkpoint, loras, bundle) as source,
    ):
        _export_into(
            tx,
            source,
            extra_unets=extras,
            tiny_decoder=tiny,
            recommended_steps=recommended_steps,
            recommended_guidance=recommended_guidance,
            fp16=fp16,
            fp16_vae=fp16_vae,
            opset=opset,
            verify=verify,
            progress=progress,
            workers=workers,
            origin=checkpoint,
            loras=records,
        )
    if not verify:
        warnings.warn(
            f"the bundle '{bundle}' was written without checking it against PyTorch",
            UserWarning,
            stacklevel=2,
        )
    return tx.manifest
