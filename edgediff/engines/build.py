"""Build a bundle's engines: plan, skip what is already valid, build the rest, record each.

The TensorRT work itself is one function, `Builder`, passed in; everything around it (which
engines are stale, where files go, what the manifest says) lives here and is tested with any
callable that writes a file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgediff.bundle.edit import edit
from edgediff.bundle.engine_compat import Platform
from edgediff.bundle.files import sha256_file
from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import EngineEntry
from edgediff.engines.fp16_models import make_fp16_models
from edgediff.engines.plan import (
    ENGINES_DIR,
    BuildRequest,
    EnginePlan,
    missing_fp16_models,
    plan_engines,
)
from edgediff.errors import InputError

# (onnx path, plan, timing cache path or None, output path) -> None; writes the engine.
Builder = Callable[[Path, EnginePlan, Path | None, Path], None]


@dataclass(frozen=True)
class BuildResult:
    """What happened to one component's engine."""

    entry: EngineEntry
    reused: bool
    seconds: float
    bytes: int


def default_timing_cache(bundle_root: Path, platform: Platform) -> Path | None:
    """The bundle's timing cache for this TensorRT version and GPU architecture; None for
    TensorRT-RTX, where the timing cache is a no-op (it keeps a runtime cache instead)."""
    if platform.toolkit.builds_ahead_of_time:
        return None
    name = f"timing-{platform.toolkit.qualified_version}-sm{platform.sm}.cache"
    return bundle_root / ENGINES_DIR / platform.toolkit.short / name


def _is_current(bundle: Bundle, plan: EnginePlan) -> EngineEntry | None:
    """The recorded engine for `plan` if its key matches and its file is intact."""
    for entry in bundle.manifest.engines:
        if entry.file != plan.file:
            continue
        record = bundle.manifest.files.get(entry.file)
        path = bundle.path(entry.file)
        if (
            entry.key == plan.key
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

    fp16 models a strongly typed TensorRT needs are made first (and kept). An interrupted
    build keeps the engines finished before it and never leaves a half engine under its final
    name.
    """
    if timing_cache is not None and platform.toolkit.builds_ahead_of_time:
        raise InputError(
            f"{platform.toolkit.title} has no timing cache (it compiles kernels on first run "
            "and keeps them in the runtime cache, BUNDLE/engines/rtx/)",
            "Drop --timing-cache",
        )
    with edit(bundle_root, "edgediff build") as tx:
        missing = missing_fp16_models(tx.bundle, request, platform)
        if missing:
            if progress:
                from tqdm.auto import tqdm

                tqdm.write(f"making fp16 models for {', '.join(missing)} (strongly typed TensorRT)")
            make_fp16_models(tx, missing)
            tx.commit()
        plans = plan_engines(tx.bundle, request, platform)
        cache = timing_cache or default_timing_cache(tx.root, platform)
        results = []
        for plan in _progress(plans, progress):
            current = None if force else _is_current(tx.bundle, plan)
            if current is not None:
                size = tx.bundle.manifest.files[current.file].bytes
                results.append(BuildResult(current, reused=True, seconds=0.0, bytes=size))
                continue
            tx.bundle.verify(list(plan.onnx.files))
            start = time.perf_counter()
            builder(tx.bundle.path(plan.onnx.file), plan, cache, tx.path(plan.file))
            seconds = time.perf_counter() - start
            entry = plan.entry(seconds)
            tx.put_engine(entry)
            tx.commit()  # each finished engine is kept, whatever happens to the next
            size = tx.bundle.manifest.files[entry.file].bytes
            results.append(BuildResult(entry, reused=False, seconds=seconds, bytes=size))
    return results


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
    width = max((len(r.entry.component) for r in results), default=0)
    for r in results:
        what = "reused (same key)" if r.reused else f"built in {r.seconds:.1f} s"
        source = r.entry.onnx.rsplit("/", 1)[-1]
        lines.append(
            f"{r.entry.component:<{width}} {r.entry.precision:<5} from {source:<16} "
            f"{r.bytes / 2**20:8.1f} MB  {what}  -> {r.entry.file}"
        )
    return "\n".join(lines)
