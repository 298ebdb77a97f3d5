"""The TensorRT half of `edgediff build`: one ONNX file and one plan in, one engine file out.

Kept to the documented Python API shared by TensorRT 8.6, 10 and 11:
- 8.6 needs the EXPLICIT_BATCH network flag (10 ignores it, 11 removed it);
- Q/DQ models build strongly typed from 10 on (11 is always strongly typed), and with the
  INT8 + FP16 flags on 8.6;
- the tactic-memory limit is the TACTIC_DRAM pool (on Jetson it bounds shared CPU/GPU memory);
- per-phase progress (IProgressMonitor) exists from 10 on; 8.6 builds silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgediff.engines.plan import EnginePlan
from edgediff.errors import EngineError
from edgediff.runtime.backends.tensorrt import import_tensorrt, platform_of
from edgediff.runtime.cuda import Cuda
from edgediff.runtime.engine_compat import Platform
from edgediff.runtime.files import atomic_write_bytes

MB = 1 << 20


def current_platform(device_id: int = 0) -> Platform:
    """The TensorRT version and GPU here, or an EngineError saying what is missing."""
    import_tensorrt()  # a missing TensorRT is named before a missing GPU
    return platform_of(Cuda(device_id))


def _network_flags(trt: Any, plan: EnginePlan) -> int:
    major = int(trt.__version__.split(".")[0])
    flags = 0
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan.flags.get("strongly_typed") and major < 11:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _precision_flags(trt: Any, plan: EnginePlan) -> list[Any]:
    wanted = [name for name in ("fp16", "int8") if plan.flags.get(name)]
    missing = [name for name in wanted if not hasattr(trt.BuilderFlag, name.upper())]
    if missing:  # TensorRT 11 dropped precision flags: types come from the ONNX alone
        raise EngineError(
            f"TensorRT {trt.__version__} has no {missing[0].upper()} builder flag (its networks "
            f"are always strongly typed), so a float32 ONNX would build as float32",
            "Export the bundle in fp16 (`edgediff export CHECKPOINT BUNDLE --fp16 --force`) "
            "or build a Q/DQ precision (--precision int8)",
        )
    return [getattr(trt.BuilderFlag, name.upper()) for name in wanted]


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
            self.bars[phase_name] = tqdm(total=num_steps, desc=desc, position=depth, leave=False)

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
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise EngineError(
            f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}",
            "Re-export the bundle with this edgediff version; report it if that does not help",
        )
    config = builder.create_builder_config()
    for flag in _precision_flags(trt, plan):
        config.set_flag(flag)
    if "workspace_mb" in plan.flags:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.flags["workspace_mb"] * MB)
    if "tactic_memory_mb" in plan.flags:
        limit = plan.flags["tactic_memory_mb"] * MB
        config.set_memory_pool_limit(trt.MemoryPoolType.TACTIC_DRAM, limit)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in plan.profile.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    monitor = _progress_monitor(trt, plan.component)
    if monitor is not None:
        config.progress_monitor = monitor  # keep `monitor` referenced until the build ends
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"TensorRT could not build the {plan.component} engine (its log above says why)",
            "If it ran out of memory, raise --workspace / --tactic-memory or narrow "
            "--batch/--size; on Jetson, add swap and close other GPU work",
        )
    with open(out, "wb") as f:
        f.write(serialized)
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
