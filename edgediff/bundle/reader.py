"""Opening a bundle: the only code that parses manifest.json, checks its paths and file hashes.

Every problem raises a BundleError naming the JSON path of the bad field or the bad file, and the
command that restores it.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from edgediff.bundle.flavours import title_of
from edgediff.bundle.schema import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    REQUIRED_COMPONENTS,
    Component,
    EngineEntry,
    Manifest,
    ModelEntry,
    steps_variant,
)
from edgediff.bundle.typed_json import FieldError, decode
from edgediff.bundle.verified import verified_files
from edgediff.errors import BundleError

# ---------------------------------------------------------------- parsing (strict, with paths)

_REEXPORT = "Re-export the bundle with `edgediff export CHECKPOINT BUNDLE --force`"

# The smallest value each numeric field may take, by field name; other numbers need only their
# type (and floats to be finite).
_MINIMUMS: dict[str, float] = {
    **dict.fromkeys(
        (
            "latent_channels",
            "vae_scale_factor",
            "sample_size",
            "max_text_length",
            "text_embed_dim",
            "unet_scale_factor",
            "max_length",
            "prompts",
            "steps",
            "batch_size",
            "format_version",
            "num_train_timesteps",
            "height",
            "width",
            "recommended_steps",
        ),
        1,
    ),
    **dict.fromkeys(
        ("pad_token_id", "bytes", "seed", "steps_offset", "build_seconds", "recommended_guidance"),
        0,
    ),
    "scaling_factor": 1e-6,
}

# The scheduler fields the runtime reads, with their types (diffusers' DDIMScheduler names).
_SCHEDULER = {
    "num_train_timesteps": int,
    "beta_start": float,
    "beta_end": float,
    "beta_schedule": str,
    "trained_betas": tuple[float, ...] | None,
    "clip_sample": bool,
    "set_alpha_to_one": bool,
    "steps_offset": int,
    "prediction_type": str,
    "thresholding": bool,
    "dynamic_thresholding_ratio": float,
    "clip_sample_range": float,
    "sample_max_value": float,
    "timestep_spacing": str,
    "rescale_betas_zero_snr": bool,
}


def _fix_for(path: str) -> str:
    """What restores a bad field: the stage that wrote it."""
    if path.startswith("engines"):
        return "Rebuild the engines with `edgediff build BUNDLE --force`"
    if path.startswith("calibration"):
        return "Record it again with `edgediff calibrate BUNDLE --force`"
    return _REEXPORT


_NO_MODELS = Component(default="", models={})


def _upgrade_engine(d: Any) -> Any:
    """An engine record of edgediff 0.1 (classic TensorRT only) in today's fields."""
    if not isinstance(d, dict) or "flavour" in d:
        return d
    d = dict(d)
    d["flavour"] = "tensorrt"
    d["tensorrt_version"] = f"trt-{d.get('tensorrt_version')}"
    d["targets"] = [d.pop("compute_capability", None)]
    return d


def parse_manifest(data: Any) -> Manifest:
    """Build a Manifest from decoded JSON; the first field of the wrong type or range raises a
    BundleError naming its JSON path."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError("manifest.json is not an edgediff bundle manifest", _REEXPORT)
    data = dict(data)
    data.pop("format")
    if isinstance(data.get("engines"), list):
        data["engines"] = [_upgrade_engine(e) for e in data["engines"]]
    try:
        version = decode(int, data.get("format_version"), "format_version", _MINIMUMS)
        if version > FORMAT_VERSION:
            raise BundleError(
                f"manifest.json has format version {version}, newer than this edgediff reads "
                f"({FORMAT_VERSION})",
                "Upgrade edgediff (pip install -U edgediff)",
            )
        manifest = decode(Manifest, data, "", _MINIMUMS)
        scheduler = dict(manifest.scheduler)
        for key, kind in _SCHEDULER.items():
            if key in scheduler:
                scheduler[key] = decode(kind, scheduler[key], f"scheduler.{key}", _MINIMUMS)
    except FieldError as e:
        raise BundleError(f"manifest.json: {e}", _fix_for(e.path)) from None
    for name, component in manifest.components.items():
        if component.default not in component.models:
            raise BundleError(
                f"manifest.json: 'components.{name}.default' names no model", _REEXPORT
            )
    for index, engine in enumerate(manifest.engines):
        for name, shapes in engine.profile.items():
            lengths = {len(shapes.get(k, ())) for k in ("min", "opt", "max")}
            if set(shapes) != {"min", "opt", "max"} or len(lengths) != 1:
                raise BundleError(
                    f"manifest.json: 'engines[{index}].profile.{name}' must hold min, opt and "
                    "max shapes of one rank",
                    _fix_for("engines"),
                )
    tokens = manifest.tokenizer.max_length
    for precision, model in manifest.components.get("text_encoder", _NO_MODELS).models.items():
        for spec in model.inputs:
            length = spec.shape[1] if len(spec.shape) == 2 else None
            if spec.name == "input_ids" and isinstance(length, int) and length != tokens:
                raise BundleError(
                    f"manifest.json: 'tokenizer.max_length' is {tokens}, but the {precision} text "
                    f"encoder takes {length} tokens",
                    _REEXPORT,
                )
    return replace(manifest, scheduler=scheduler)


def check_inside(root: Path, rel: str) -> None:
    """Refuse any manifest path that could resolve outside the bundle folder."""
    posix = PurePosixPath(rel)
    if not rel or posix.is_absolute() or "\\" in rel or ".." in posix.parts or ":" in rel:
        raise BundleError(
            f"manifest.json names the path '{rel}', which leaves the bundle folder",
            "Refusing to load it; re-export the bundle from its checkpoint",
        )
    resolved = (root / rel).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BundleError(
            f"manifest.json names '{rel}', which resolves outside the bundle folder "
            "(a symbolic link?)",
            "Refusing to load it; re-export the bundle from its checkpoint",
        )


def build_command(root: str | os.PathLike, precision: str, *options: str) -> str:
    """The `edgediff build` command line that (re)builds a bundle's engines, ready to paste."""
    return shlex.join(["edgediff", "build", str(root), "--precision", precision, *options])


class Bundle:
    """An opened bundle folder whose manifest parsed and whose paths all stay inside it."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, root: str | os.PathLike) -> Bundle:
        """Read and validate manifest.json; check every named file exists at its recorded size."""
        root = Path(root)
        if not root.is_dir():
            raise BundleError(
                f"bundle folder '{root}' does not exist",
                "Pass the folder `edgediff export` wrote (it holds manifest.json)",
            )
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(
                f"'{root}' has no {MANIFEST}, so it is not an edgediff bundle",
                "Create one with `edgediff export CHECKPOINT BUNDLE`",
            )
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{manifest_path} is not valid JSON ({e})", _REEXPORT) from None
        manifest = parse_manifest(data)
        for rel in manifest.referenced_paths():
            check_inside(root, rel)
        bundle = cls(root, manifest)
        bundle._check_present()
        return bundle

    def _check_present(self) -> None:
        missing_components = [c for c in REQUIRED_COMPONENTS if c not in self.manifest.components]
        if missing_components:
            raise BundleError(
                f"the bundle has no {', '.join(missing_components)} in its manifest", _REEXPORT
            )
        # Engines are derived caches: a missing or damaged one is rebuilt by `edgediff build`,
        # so it must not make the rest of the bundle unreadable. verify() checks them on load.
        engines = {e.file for e in self.manifest.engines}
        for rel, record in self.manifest.files.items():
            if rel in engines:
                continue
            path = self.root / rel
            if not path.parent.is_dir():
                folder = path.parent.relative_to(self.root).as_posix()
                raise BundleError(f"the bundle's folder '{folder}/' is missing", _REEXPORT)
            if not path.is_file():
                raise BundleError(f"bundle file '{rel}' is missing", _REEXPORT)
            size = path.stat().st_size
            if size != record.bytes:
                raise BundleError(
                    f"bundle file '{rel}' is {size} bytes, the manifest says {record.bytes} "
                    "(truncated or replaced)",
                    _REEXPORT,
                )

    def path(self, rel: str) -> Path:
        """Absolute path of a file the manifest names."""
        return self.root / rel

    def verify(self, paths: list[str] | None = None) -> None:
        """Check sha256 of the given files (default: all); raise naming the first that differs.

        A file unchanged since it last matched (edgediff.bundle.verified) is not hashed again.
        """
        with verified_files() as cache:
            for rel in self.manifest.files if paths is None else paths:
                record = self.manifest.files.get(rel)
                if record is None:
                    raise BundleError(f"'{rel}' is not listed in manifest.json", _REEXPORT)
                path = self.root / rel
                if not path.is_file():
                    raise BundleError(f"bundle file '{rel}' is missing", self._fix_for(rel))
                if not cache.matches(path, record.sha256):
                    raise BundleError(
                        f"bundle file '{rel}' does not match its sha256 in manifest.json "
                        "(changed or corrupted)",
                        self._fix_for(rel),
                    )

    def _fix_for(self, rel: str) -> str:
        """How to restore a bad file: rebuild it if it is an engine, re-export otherwise."""
        for engine in self.manifest.engines:
            if engine.file == rel:
                command = build_command(
                    self.root, engine.precision, "--flavour", engine.flavour, "--force"
                )
                return f"Rebuild it: {command}"
        return _REEXPORT

    def engine(
        self, component: str, precision: str | None = None, flavour: str | None = None
    ) -> EngineEntry:
        """The TensorRT engine of a component at a precision (the only one built if None), of
        a flavour ("tensorrt", "rtx"; None: the only one built)."""
        engines = [e for e in self.manifest.engines if flavour in (None, e.flavour)]
        built = sorted({e.precision for e in engines})
        if precision is None:
            if len(built) > 1:
                raise BundleError(
                    f"the bundle has engines at several precisions ({', '.join(built)})",
                    "Pick one with --precision",
                )
            precision = built[0] if built else "fp16"
        found = [e for e in engines if (e.component, e.precision) == (component, precision)]
        if len(found) > 1:
            raise BundleError(
                f"the bundle has {precision} {component} engines of both TensorRT flavours",
                "Pick one with flavour='tensorrt' or flavour='rtx'",
            )
        if found:
            return found[0]
        options = ("--flavour", flavour) if flavour else ()
        what = title_of(flavour or "tensorrt")
        raise BundleError(
            f"the bundle has no {precision} {what} engine for {component}"
            + (f" (it has engines at: {', '.join(built)})" if built else ""),
            f"Build them: {build_command(self.root, precision, *options)}",
        )

    def unet_for(self, steps: int | None) -> str:
        """The U-Net component that runs `steps` DDIM steps: the one distilled for that many
        (unet.steps-N) if the bundle has it, else "unet"."""
        variant = steps_variant(steps) if steps is not None else None
        return variant if variant in self.manifest.components else "unet"

    def guidance_embedded(self, unet: str) -> bool:
        """Whether a U-Net component was guidance-distilled: it takes w and runs once on batch N."""
        record = self.model(unet).distillation
        return record is not None and record.guidance_embedded

    def model(self, component: str, precision: str | None = None) -> ModelEntry:
        """The model entry of a component at a precision (its default if None)."""
        comp = self.manifest.components.get(component)
        if comp is None:
            raise BundleError(f"the bundle has no {component}", _REEXPORT)
        key = precision or comp.default
        if key not in comp.models:
            have = ", ".join(sorted(comp.models))
            raise BundleError(
                f"the bundle has no {precision} {component} (it has: {have})",
                f"Pick one of {have}, or create it (e.g. `edgediff quantize`)",
            )
        return comp.models[key]
