"""The bundle: manifest schema, reader and writer; the only code that touches manifest.json.

A bundle is a folder laid out like diffusers'/optimum's ONNX pipelines:

    manifest.json  model_index.json  scheduler/scheduler_config.json  tokenizer/...
    text_encoder/model.onnx  unet/model.onnx  vae_decoder/model.onnx  vae_encoder/model.onnx

Every file is listed in the manifest with its sha256 and size; paths never leave the folder.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from edgediff import __version__
from edgediff.errors import BundleError
from edgediff.runtime.files import atomic_write_text, sha256_file
from edgediff.runtime.tensorrt_flavours import title_of
from edgediff.runtime.typed_json import FieldError, decode

MANIFEST = "manifest.json"
FORMAT = "edgediff-bundle"
FORMAT_VERSION = 1
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
REQUIRED_COMPONENTS = ("text_encoder", "unet", "vae_decoder")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, numpy dtype name, shape with named symbolic dims."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Verification:
    """How a model compared with its reference (max errors over all checked shapes)."""

    max_abs_error: float
    max_rel_error: float
    rel_tolerance: float
    passed: bool
    shapes: tuple[dict[str, Any], ...] = ()
    # What it was compared with: the checkpoint's PyTorch module (export), or the bundle's
    # fp32 model (fp16 models made by `edgediff build`).
    reference: str = "PyTorch"


@dataclass(frozen=True)
class ModelEntry:
    """One ONNX file of a component at one precision."""

    file: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: tuple[str, ...] = ()
    verification: Verification | None = None
    # For Q/DQ models: quantiser, settings, layers kept in float, measured accuracy.
    quantization: dict[str, Any] | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """The ONNX file and its external data files."""
        return (self.file, *self.external_data)


@dataclass(frozen=True)
class Component:
    """A pipeline component: its models by precision and which one loads by default."""

    default: str
    models: dict[str, ModelEntry]


@dataclass(frozen=True)
class ModelConfig:
    """What the runtime needs to know about the model family, beyond the graphs."""

    latent_channels: int
    scaling_factor: float
    vae_scale_factor: int
    sample_size: int
    max_text_length: int
    text_embed_dim: int
    # The U-Net halves the latent (levels - 1) times; graphs are traced for sizes it divides.
    unet_scale_factor: int = 1

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this many pixels."""
        return self.vae_scale_factor * self.unet_scale_factor

    @property
    def default_image_size(self) -> int:
        """Height and width the U-Net was configured for, in pixels."""
        return self.sample_size * self.vae_scale_factor


@dataclass(frozen=True)
class TokenizerConfig:
    """The `tokenizers` JSON the runtime uses, and how prompts are padded."""

    file: str
    max_length: int
    pad_token_id: int
    original_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Calibration:
    """Component inputs recorded while the fp32 pipeline sampled calibration prompts."""

    prompts: int
    prompts_sha256: str
    steps: int
    guidance: float
    seed: int
    batch_size: int
    timesteps: tuple[int, ...]
    # component -> input name -> .npy file holding every recorded call, stacked on axis 0.
    inputs: dict[str, dict[str, str]]
    height: int | None = None  # image size sampled; None: the model's default
    width: int | None = None

    @property
    def files(self) -> list[str]:
        """Every array file of the recording."""
        return [f for arrays in self.inputs.values() for f in arrays.values()]


@dataclass(frozen=True)
class EngineEntry:
    """A TensorRT engine built from one of the bundle's ONNX models, and what makes it valid."""

    component: str
    precision: str  # the precision it was built for (fp16, int8, fp8)
    file: str
    onnx: str  # the ONNX file it was built from
    onnx_sha256: str
    flavour: str  # "tensorrt" (classic) or "rtx" (TensorRT-RTX)
    tensorrt_version: str  # with its flavour: "trt-10.3.0", "rtx-1.7.1.116"
    # Compute capabilities it runs on: the building GPU's for classic TensorRT ("8.7" on Orin),
    # the targets it was built for ahead of time for TensorRT-RTX ("8.6", "8.9", "12.0").
    targets: tuple[str, ...]
    gpu_name: str | None  # the GPU that built it; None for a TensorRT-RTX build without one
    # input name -> {"min": [...], "opt": [...], "max": [...]}
    profile: dict[str, dict[str, list[int]]]
    flags: dict[str, Any]  # builder settings: strongly typed, fp16, memory limits, ...
    key: str  # sha256 over everything above that makes the engine valid
    build_seconds: float = 0.0


def build_command(root: str | os.PathLike, precision: str, *options: str) -> str:
    """The `edgediff build` command line that (re)builds a bundle's engines, ready to paste."""
    return shlex.join(["edgediff", "build", str(root), "--precision", precision, *options])


@dataclass(frozen=True)
class FileRecord:
    """Size and hash of one file in the bundle."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """Everything a bundle says about itself."""

    model: ModelConfig
    scheduler: dict[str, Any]
    tokenizer: TokenizerConfig
    components: dict[str, Component]
    files: dict[str, FileRecord]
    source: dict[str, Any] = field(default_factory=dict)
    engines: tuple[EngineEntry, ...] = ()
    calibration: Calibration | None = None
    edgediff_version: str = __version__
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The manifest as the JSON text stored in manifest.json."""
        data = {"format": FORMAT, **asdict(self)}
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    def referenced_paths(self) -> list[str]:
        """Every path the manifest names, used or not, so each can be checked to stay inside."""
        paths = list(self.files)
        paths.append(self.tokenizer.file)
        paths.extend(self.tokenizer.original_files)
        for component in self.components.values():
            for entry in component.models.values():
                paths.extend(entry.files)
        if self.calibration is not None:
            paths.extend(self.calibration.files)
        for engine in self.engines:
            paths.extend((engine.file, engine.onnx))
        return paths


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
        ),
        1,
    ),
    **dict.fromkeys(("pad_token_id", "bytes", "seed", "steps_offset", "build_seconds"), 0),
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


def _check_inside(root: Path, rel: str) -> None:
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


# ---------------------------------------------------------------- the reader


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
            _check_inside(root, rel)
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
        """Check sha256 of the given files (default: all); raise naming the first that differs."""
        for rel in self.manifest.files if paths is None else paths:
            record = self.manifest.files.get(rel)
            if record is None:
                raise BundleError(f"'{rel}' is not listed in manifest.json", _REEXPORT)
            path = self.root / rel
            if not path.is_file():
                raise BundleError(f"bundle file '{rel}' is missing", self._fix_for(rel))
            if sha256_file(path) != record.sha256:
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


def file_record(root: str | os.PathLike, rel: str) -> FileRecord:
    """Hash and size of a written bundle file, for the manifest's file table."""
    path = Path(root) / rel
    return FileRecord(sha256=sha256_file(path), bytes=path.stat().st_size)


def with_files(manifest: Manifest, root: str | os.PathLike, rels: list[str]) -> Manifest:
    """The manifest with these written files (re)hashed into its file table."""
    return replace(manifest, files={**manifest.files, **{r: file_record(root, r) for r in rels}})


def with_model(manifest: Manifest, component: str, entry: ModelEntry) -> Manifest:
    """The manifest with `entry` added to (or replacing) `component`'s model at its precision."""
    comp = manifest.components[component]
    models = {**comp.models, entry.precision: entry}
    return replace(
        manifest, components={**manifest.components, component: replace(comp, models=models)}
    )


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> None:
    """Write manifest.json all-or-nothing, after checking every path it names stays inside."""
    root = Path(root)
    for rel in manifest.referenced_paths():
        _check_inside(root, rel)
    atomic_write_text(root / MANIFEST, manifest.to_json())
