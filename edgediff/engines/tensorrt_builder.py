"""The TensorRT half of `edgediff build`: one ONNX file and one plan in, one engine file out.

Kept to the documented Python API shared by TensorRT 8.6, 10 and 11 and TensorRT-RTX 1.x:
- 8.6 needs the EXPLICIT_BATCH network flag (10 ignores it; 11 and TensorRT-RTX removed it);
- Q/DQ models build strongly typed from 10 on; 11 and TensorRT-RTX are always strongly typed,
  with no FP16/INT8 builder flags (their fp16 engines come from fp16 models); 8.6 builds Q/DQ
  with the INT8 + FP16 flags;
- TensorRT-RTX builds for listed compute capabilities without a GPU; classic TensorRT for the
  GPU it runs on, where its timing cache lives;
- the tactic-memory limit is the TACTIC_DRAM pool (on Jetson it bounds shared CPU/GPU memory);
- per-phase progress (IProgressMonitor) exists from 10 on; 8.6 builds silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgediff.bundle.engine_compat import Platform
from edgediff.bundle.files import atomic_write_bytes
from edgediff.engines.plan import EnginePlan
from edgediff.errors import BackendError, EngineError
from edgediff.runtime.backends.tensorrt import platform_of
from edgediff.runtime.cuda import Cuda, import_cudart
from edgediff.runtime.tensorrt_flavours import import_tensorrt, rtx_targets, toolkit_of

MB = 1 << 20


def current_platform(flavour: str | None = None, device_id: int = 0) -> Platform:
    """The TensorRT here (of `flavour`, or the one installed) and, for classic TensorRT, the GPU
    it builds for; an error says what is missing. TensorRT-RTX needs no GPU and no cuda-python."""
    trt = import_tensorrt(flavour)  # a missing TensorRT is named before a missing GPU
    toolkit = toolkit_of(trt)
    if toolkit.builds_ahead_of_time:
        return Platform(toolkit, known_targets=tuple(rtx_targets(trt)))
    import_cudart()  # a missing cuda-python is its own error, with its own fix
    try:
        return platform_of(trt, Cuda(device_id))
    except BackendError as e:
        raise EngineError(
            f"{toolkit.title} builds engines on the GPU that will run them, and this machine has "
            f"none it can use ({e.problem})",
            "Build on that device (Jetson, datacenter GPU); for RTX GPUs, TensorRT-RTX builds "
            "without one: pip install 'edgediff[trt-rtx]' and --flavour rtx",
        ) from None


def _network_flags(trt: Any, plan: EnginePlan) -> int:
    flags = 0
    names = trt.NetworkDefinitionCreationFlag.__members__
    if plan.toolkit.flavour == "tensorrt" and plan.toolkit.major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    strongly_typed = plan.flags.get("strongly_typed") and not plan.toolkit.always_strongly_typed
    if strongly_typed and "STRONGLY_TYPED" in names:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _precision_flags(trt: Any, plan: EnginePlan) -> list[Any]:
    wanted = [name for name in ("fp16", "int8") if plan.flags.get(name)]
    missing = [name for name in wanted if not hasattr(trt.BuilderFlag, name.upper())]
    if missing:  # the plan asked a strongly typed TensorRT for a weak-typing flag: a bug
        raise EngineError(
            f"{plan.toolkit.title} has no {missing[0].upper()} builder flag (its networks are "
            "always strongly typed)",
            "Report this; as a workaround export the bundle with --fp16",
        )
    return [getattr(trt.BuilderFlag, name.upper()) for name in wanted]


def _set_targets(trt: Any, config: Any, plan: EnginePlan) -> None:
    """Ahead-of-time targets for TensorRT-RTX; classic TensorRT builds for the GPU here."""
    if not plan.toolkit.builds_ahead_of_time:
        return
    known = rtx_targets(trt)
    config.num_compute_capabilities = len(plan.targets)
    for index, target in enumerate(plan.targets):
        if not config.set_compute_capability(known[target], index):
            raise EngineError(
                f"{plan.toolkit.title} refused target compute capability {target}",
                f"Pick targets from {', '.join(known)}",
            )


def _progress_monitor(trt: Any, label: str) -> Any:
    """A TensorRT progress monitor that shows build phases as a tqdm bar, if TensorRT has one."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    from tqdm.auto import tqdm

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = len(self.bars)
            desc = f"{label}: {phase_name}"
            self.bars[phase_name] = tqdm(
                total=num_steps, desc=desc, position=depth, leave=False, disable=None
            )

        def step_complete(self, phase_name, step):
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.n = step + 1
                bar.refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()


def build_engine(onnx_path: Path, plan: EnginePlan, timing_cache: Path | None, out: Path) -> None:
    """Parse `onnx_path`, build it as `plan` says, write the engine to `out` (the Builder)."""
    trt = import_tensorrt(plan.toolkit.flavour)
    if toolkit_of(trt) != plan.toolkit:
        raise EngineError(
            f"the plan is for {plan.toolkit.title} but {toolkit_of(trt).title} is installed",
            "Plan and build in one process (edgediff build)",
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise EngineError(
            f"{plan.toolkit.title}'s ONNX parser rejected {onnx_path.name}: {errors}",
            "Re-export the bundle with this edgediff version; report it if that does not help",
        )
    config = builder.create_builder_config()
    for flag in _precision_flags(trt, plan):
        config.set_flag(flag)
    _set_targets(trt, config, plan)
    if "workspace_mb" in plan.flags:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.flags["workspace_mb"] * MB)
    if "tactic_memory_mb" in plan.flags:
        limit = plan.flags["tactic_memory_mb"] * MB
        config.set_memory_pool_limit(trt.MemoryPoolType.TACTIC_DRAM, limit)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in plan.profile.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    if timing_cache is not None:
        cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    monitor = _progress_monitor(trt, plan.component)
    if monitor is not None:
        config.progress_monitor = monitor  # keep `monitor` referenced until the build ends
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"{plan.toolkit.title} could not build the {plan.component} engine (its log above "
            "says why)",
            "If it ran out of memory, raise --workspace / --tactic-memory or narrow "
            "--batch/--size; on Jetson, add swap and close other GPU work",
        )
    with open(out, "wb") as f:
        f.write(serialized)
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
