"""Build a bundle's engines: plan, skip what is already valid, build the rest, record each.

The TensorRT work itself is one function, `Builder`, passed in; everything around it (which
engines are stale, where files go, what the manifest says) lives here and is tested with any
callable that writes a file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from edgediff.engines.plan import ENGINES_DIR, BuildRequest, EnginePlan, plan_engines
from edgediff.runtime.bundle import Bundle, EngineEntry, with_files, write_manifest
from edgediff.runtime.engine_compat import Platform
from edgediff.runtime.files import atomic_path, sha256_file

# (onnx path, plan, timing cache path or None, output path) -> None; writes the engine.
Builder = Callable[[Path, EnginePlan, Path | None, Path], None]


@dataclass(frozen=True)
class BuildResult:
    """What happened to one component's engine."""

    entry: EngineEntry
    reused: bool
    seconds: float
    bytes: int


def default_timing_cache(bundle_root: Path, platform: Platform) -> Path:
    """The bundle's timing cache for this TensorRT version and GPU architecture."""
    name = f"timing-trt{platform.tensorrt_version}-sm{platform.sm}.cache"
    return bundle_root / ENGINES_DIR / name


def _is_current(bundle: Bundle, plan: EnginePlan, platform: Platform) -> EngineEntry | None:
    """The recorded engine for `plan` if its key matches and its file is intact."""
    for entry in bundle.manifest.engines:
        if (entry.component, entry.precision) != (plan.component, plan.precision):
            continue
        record = bundle.manifest.files.get(entry.file)
        path = bundle.path(entry.file)
        if (
            entry.key == plan.key(platform)
            and record is not None
            and path.is_file()
            and sha256_file(path) == record.sha256
        ):
            return entry
    return None


def build_engines(
    bundle_root: str | Path,
    request: BuildRequest,
    platform: Platform,
    builder: Builder,
    timing_cache: Path | None = None,
    force: bool = False,
    progress: bool = False,
) -> list[BuildResult]:
    """Build (or reuse) one engine per pipeline component; the manifest is updated after each.

    An interrupted build keeps the engines finished before it and never leaves a half engine
    under its final name.
    """
    bundle = Bundle.open(bundle_root)
    plans = plan_engines(bundle, request, platform)
    cache = timing_cache or default_timing_cache(bundle.root, platform)
    results = []
    for plan in _progress(plans, progress):
        current = None if force else _is_current(bundle, plan, platform)
        if current is not None:
            size = bundle.manifest.files[current.file].bytes
            results.append(BuildResult(current, reused=True, seconds=0.0, bytes=size))
            continue
        bundle.verify(list(plan.onnx.files))
        start = time.perf_counter()
        with atomic_path(bundle.path(plan.file)) as tmp:
            builder(bundle.path(plan.onnx.file), plan, cache, tmp)
        seconds = time.perf_counter() - start
        entry = plan.entry(platform, seconds)
        bundle = _record(bundle, entry)
        size = bundle.manifest.files[entry.file].bytes
        results.append(BuildResult(entry, reused=False, seconds=seconds, bytes=size))
    return results


def _record(bundle: Bundle, entry: EngineEntry) -> Bundle:
    """Write `entry` into the manifest in place of any engine for the same component and
    precision; return the bundle as it now reads."""
    others = tuple(
        e
        for e in bundle.manifest.engines
        if (e.component, e.precision) != (entry.component, entry.precision)
    )
    manifest = with_files(bundle.manifest, bundle.root, [entry.file])
    manifest = replace(manifest, engines=(*others, entry))
    write_manifest(bundle.root, manifest)
    return Bundle(bundle.root, manifest)


def _progress(plans: list[EnginePlan], enabled: bool):
    if not enabled:
        return plans
    from tqdm.auto import tqdm

    bar = tqdm(plans, desc="engines", unit="engine")

    def labelled():
        for plan in bar:
            bar.set_postfix_str(f"{plan.component} ({plan.precision})")
            yield plan

    return labelled()


def format_results(results: list[BuildResult]) -> str:
    """One line per engine: component, precision, built or reused, size, seconds."""
    lines = []
    for r in results:
        what = "reused (same key)" if r.reused else f"built in {r.seconds:.1f} s"
        lines.append(
            f"{r.entry.component:<13} {r.entry.precision:<5} {r.bytes / 2**20:8.1f} MB  "
            f"{what}  -> {r.entry.file}"
        )
    return "\n".join(lines)
