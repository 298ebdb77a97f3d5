"""A bundle's manifest as plain-text tables, for `edgediff info`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgediff.bundle.flavours import describe
from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import EngineEntry, ModelEntry, TensorSpec, kind_of
from edgediff.runtime.memory import MEMORY_MODES

if TYPE_CHECKING:
    from edgediff.runtime.pipeline import Pipeline


def _table(header: list[str] | None, rows: list[list[str]]) -> str:
    """Left-aligned columns; a dashed rule under the header if there is one."""
    columns = list(zip(*([header] if header else []), *rows, strict=True))
    widths = [max(len(str(c)) for c in col) for col in columns]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    head = [line(header), line(["-" * w for w in widths])] if header else []
    return "\n".join([*head, *map(line, rows)])


def _signature(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{s.name}:{s.dtype}[{','.join(map(str, s.shape))}]" for s in specs)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _check(entry: ModelEntry) -> str:
    """How a model was checked: export verification against PyTorch, or quantisation PSNR."""
    v, q = entry.verification, entry.quantization
    if v is not None:
        return (
            f"vs {v.reference}: {'ok' if v.passed else 'FAILED'} abs {v.max_abs_error:.1e} "
            f"rel {v.max_rel_error:.1e} (tol {v.rel_tolerance:.0e})"
        )
    if q is not None:
        n = len(q.kept_in_float)
        return (
            f"vs fp32: {q.psnr_db:.1f} dB PSNR of {q.measured_on}, "
            f"{n} layer{'s' * (n != 1)} kept in float"
        )
    return "not verified"


def _engine_row(e: EngineEntry, size: int) -> list[str]:
    flags = ", ".join(k for k, v in e.flags.items() if v is True)
    profile = "; ".join(
        f"{name} {'x'.join(map(str, p['min']))} .. {'x'.join(map(str, p['max']))}"
        for name, p in e.profile.items()
    )
    return [
        e.file,
        f"{e.precision} ({flags})",
        _size(size),
        f"{describe(e.tensorrt_version)}, "
        + (
            f"{e.gpu_name} (sm {', '.join(e.targets)})"
            if e.gpu_name
            else f"targets sm {', '.join(e.targets)}"
        ),
        profile,
    ]


def format_bundle(bundle: Bundle) -> str:
    """Model facts, components (precision, size, I/O, verification) and engines as text."""
    m = bundle.manifest
    cfg = m.model
    facts = [
        ["bundle", str(bundle.root)],
        ["format / edgediff", f"{m.format_version} / {m.edgediff_version}"],
        [
            "source",
            f"{m.source.get('checkpoint', '?')} (sha256 {str(m.source.get('sha256', '?'))[:12]})",
        ],
        [
            "default image",
            f"{cfg.default_image_size}x{cfg.default_image_size} "
            f"(sides: multiples of {cfg.size_multiple})",
        ],
        [
            "latents",
            f"{cfg.latent_channels} ch, 1/{cfg.vae_scale_factor} size, scale {cfg.scaling_factor}",
        ],
        ["text", f"{m.tokenizer.max_length} tokens -> {cfg.text_embed_dim}-d"],
        [
            "scheduler",
            ", ".join(
                f"{k}={m.scheduler[k]}"
                for k in ("prediction_type", "beta_schedule", "timestep_spacing")
                if k in m.scheduler
            ),
        ],
    ]
    for name, comp in m.components.items():
        record = comp.models[comp.default].distillation
        if kind_of(name) == "unet" and record is not None:
            low, high = record.guidance_range
            facts.append(
                [
                    f"distilled {name}",
                    f"{record.method} for {', '.join(map(str, record.steps))} DDIM "
                    f"step{'' if record.steps == (1,) else 's'}; guidance "
                    f"{low:g} to {high:g} embedded (one U-Net pass a step); no negative prompts; "
                    f"teacher {record.teacher_unet_sha256[:12]}, data {record.data}",
                ]
            )
    if cfg.inpainting:
        facts.append(
            [
                "inpainting U-Net",
                f"{cfg.unet_in_channels} input channels (latents, mask, masked image): needs "
                "an image and a mask",
            ]
        )
    for lora in m.loras:
        facts.append(["LoRA fused", f"{lora.file} at {lora.scale:g} (sha256 {lora.sha256[:12]})"])
    if m.recommended_steps is not None:
        facts.append(["recommended steps", str(m.recommended_steps)])
    if m.recommended_guidance is not None:
        facts.append(["recommended guidance", f"{m.recommended_guidance:g}"])
    if m.calibration is not None:
        c = m.calibration
        facts.append(
            [
                "calibration",
                f"{c.prompts} prompts, {c.steps} steps, guidance {c.guidance:g}, seed {c.seed}",
            ]
        )
    rows = []
    for name, comp in m.components.items():
        for precision, entry in comp.models.items():
            size = sum(m.files[f].bytes for f in entry.files if f in m.files)
            check = _check(entry)
            default = "*" if precision == comp.default else ""
            rows.append([name, precision + default, _size(size), entry.file, check])
    io_rows = [
        [name, _signature(e.inputs), _signature(e.outputs)]
        for name, comp in m.components.items()
        for e in [comp.models[comp.default]]
    ]
    parts = [
        _table(None, facts),
        _table(["component", "precision", "size", "file", "accuracy"], rows),
        _table(["component", "inputs", "outputs"], io_rows),
    ]
    if m.engines:
        parts.append(
            _table(
                ["engine", "precision", "size", "built for", "profile (min .. max)"],
                [
                    _engine_row(e, m.files[e.file].bytes if e.file in m.files else 0)
                    for e in m.engines
                ],
            )
        )
    return "\n\n".join(parts)


def format_memory(pipe: Pipeline, sizes: tuple[int, ...]) -> str:
    """Estimated peak memory of one image in each memory mode at square `sizes`, with the
    VAE tiled where the pipeline would tile it (runtime.memory)."""
    steps = pipe.default_steps
    guidance = pipe.guidance_for(steps)
    rows = []
    for memory in MEMORY_MODES:
        pipe.memory = memory
        cells = [memory]
        for size in sizes:
            tiled = pipe.needs_vae_tiling(1, size, size, guidance, steps)
            peak = pipe.memory_estimate(1, size, size, guidance, steps, tiled).peak(memory)
            cells.append(_size(peak) + (" (VAE tiled)" if tiled else ""))
        rows.append(cells)
    header = ["memory mode", *(f"{s}×{s}" for s in sizes)]
    note = (
        f"estimated peak memory of one image, {steps} steps, guidance {guidance:g} "
        "(ONNX Runtime on the CPU; `generate --memory`)"
    )
    return note + "\n" + _table(header, rows)
