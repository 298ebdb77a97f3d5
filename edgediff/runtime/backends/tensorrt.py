"""TensorRT backend: engines built by `edgediff build`, run through the name-based tensor API.

Written against TensorRT 8.6 to 11 and TensorRT-RTX 1.x (set_input_shape / set_tensor_address /
execute_async_v3) and cuda-python; no torch. Each session keeps one device buffer per tensor,
grown only when a bigger shape arrives, so the denoising loop allocates nothing after its first
step. All engines of a backend share one block of scratch (activation) memory, sized for the
largest, because the pipeline runs them one after another on one stream.

CUDA graphs: a classic engine with only static shapes can have its launch captured here and
replayed. TensorRT-RTX captures and replays graphs itself (its runtime config's
WHOLE_GRAPH_CAPTURE strategy), so there it is asked to instead. TensorRT-RTX also compiles
kernels for the GPU at first inference; they are kept in a runtime cache that this backend
loads from and saves to `cache_dir` (the bundle's engines/rtx/), so only the first run pays.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.bundle.engine_compat import Platform, require_in_profile
from edgediff.bundle.files import atomic_write_bytes
from edgediff.errors import BackendError
from edgediff.runtime.backends.base import unchanged
from edgediff.runtime.cuda import Cuda, handle
from edgediff.runtime.tensorrt_flavours import import_tensorrt, rtx_targets, toolkit_of

_REBUILD = "Rebuild the bundle's engines on this device: edgediff build BUNDLE --force"


def platform_of(trt: Any, cuda: Cuda) -> Platform:
    """The TensorRT module `trt` and the GPU `cuda` drives: what an engine must be built for."""
    gpu_name, capability = cuda.gpu()
    toolkit = toolkit_of(trt)
    known = tuple(rtx_targets(trt)) if toolkit.builds_ahead_of_time else ()
    return Platform(toolkit, gpu_name, capability, known)


def runtime_cache_file(cache_dir: Path, platform: Platform) -> Path:
    """TensorRT-RTX's runtime cache for this version and GPU architecture, in `cache_dir`."""
    return cache_dir / f"runtime-{platform.toolkit.qualified_version}-sm{platform.sm}.cache"


def _invalid_reasons(trt: Any, diagnostics: int) -> str:
    """TensorRT-RTX's engine invalidity bit mask as words."""
    names = [
        name.lower().replace("_", " ")
        for name, value in trt.EngineInvalidityDiagnostics.__members__.items()
        if diagnostics & int(value)
    ]
    return ", ".join(names) or "no reason given"


class TrtSession:
    """One engine and its execution context, with device buffers kept from call to call."""

    def __init__(self, engine: Any, backend: TrtBackend, cuda_graph: bool):
        trt = backend.trt
        self._engine = engine
        self._cuda = backend.cuda
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        # (min, max) shape per input: profile 0's where dynamic (`edgediff build` makes one).
        self._ranges = {n: self._range(engine, n) for n in self.input_names}
        rtx = backend.toolkit.flavour == "rtx"
        if rtx:
            self._runtime_config = backend.runtime_config(engine, cuda_graph)
            self._context = engine.create_execution_context(self._runtime_config)
            self.scratch_bytes = int(engine.device_memory_size_v2)
        elif hasattr(engine, "device_memory_size_v2"):  # TensorRT 10.1 and later
            strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
            self._context = engine.create_execution_context(strategy)
            self.scratch_bytes = int(engine.device_memory_size_v2)
        else:  # TensorRT 8.6 / 10.0
            self._context = engine.create_execution_context_without_device_memory()
            self.scratch_bytes = int(engine.device_memory_size)
        if self._context is None:
            raise BackendError("TensorRT could not create an execution context", _REBUILD)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity)
        self._held: dict[str, np.ndarray] = {}  # each input's last host array
        # TensorRT-RTX captures its own graphs (see TrtBackend.runtime_config).
        static = all(lo == hi for lo, hi in self._ranges.values())
        self._use_graph = cuda_graph and static and not rtx
        self._graph: Any = None

    @staticmethod
    def _range(engine: Any, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        shape = tuple(engine.get_tensor_shape(name))
        if -1 not in shape:
            return shape, shape
        low, _, high = engine.get_tensor_profile_shape(name, 0)
        return tuple(low), tuple(high)

    def use_scratch(self, pointer: int, size: int) -> None:
        """Point the context at the shared scratch block."""
        if hasattr(self._context, "set_device_memory"):
            self._context.set_device_memory(pointer, size)
        else:
            self._context.device_memory = pointer
        self._drop_graph()  # a captured graph holds the old addresses

    def _drop_graph(self) -> None:
        if self._graph is not None:
            self._cuda.destroy_graph(self._graph)
            self._graph = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy feeds to the device, run the engine, return host copies of the outputs."""
        if self._context is None:
            raise BackendError("this engine's session was closed", "Load the pipeline again")
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            require_in_profile(name, array.shape, *self._ranges[name])
            if not self._context.set_input_shape(name, array.shape):
                raise BackendError(f"TensorRT refused shape {array.shape} for input '{name}'")
            pointer = self._buffer(name, array.nbytes)
            if not unchanged(array, self._held.get(name)):
                self._cuda.upload(pointer, array)
            self._held[name] = array
        outputs = {}
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=self._dtypes[name])
            self._buffer(name, outputs[name].nbytes)
        if self._use_graph:
            if self._graph is None:
                self._enqueue()  # TensorRT must run once before its launch can be captured
                self._graph = self._cuda.capture(self._enqueue)
            self._cuda.launch(self._graph)
        else:
            self._enqueue()
        for name, array in outputs.items():
            self._cuda.download(array, self._buffers[name][0])
        self._cuda.synchronize()
        return outputs

    def _buffer(self, name: str, nbytes: int) -> int:
        """The device buffer of a tensor, (re)allocated only when it must grow."""
        pointer, capacity = self._buffers.get(name, (0, -1))
        if nbytes > capacity:
            if pointer:
                self._cuda.synchronize()
                self._cuda.free(pointer)
            pointer = self._cuda.malloc(nbytes)
            self._buffers[name] = (pointer, nbytes)
            if not self._context.set_tensor_address(name, pointer):
                raise BackendError(f"TensorRT refused the address of tensor '{name}'")
            self._drop_graph()
            self._held.pop(name, None)  # a new buffer holds nothing yet
        return pointer

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(handle(self._cuda.stream)):
            raise BackendError("TensorRT failed to run the engine (see its log above)", _REBUILD)

    def close(self) -> None:
        """Free the device buffers, the captured graph and the execution context."""
        if self._context is None:
            return
        self._cuda.synchronize()
        for pointer, _ in self._buffers.values():
            self._cuda.free(pointer)
        self._buffers.clear()
        self._held.clear()
        if self._graph is not None:
            self._cuda.destroy_graph(self._graph)
            self._graph = None
        self._context = None  # TensorRT frees a context when its last reference goes
        self._engine = None


class TrtBackend:
    """Loads TensorRT engines onto one GPU; `platform` is what engines must have been built for.

    `flavour` picks "tensorrt" or "rtx" where both are installed; `cache_dir` is where
    TensorRT-RTX's runtime cache is kept (None: in memory, for this backend's life only).
    """

    name = "trt"
    array_location = "host"
    model_format = "engine"

    def __init__(
        self,
        device_id: int = 0,
        cuda_graph: bool = False,
        flavour: str | None = None,
        cache_dir: str | Path | None = None,
    ):
        self.trt = import_tensorrt(flavour)
        self.toolkit = toolkit_of(self.trt)
        self.cuda = Cuda(device_id)
        self.cuda_graph = cuda_graph
        self._logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(self._logger)
        self.platform = platform_of(self.trt, self.cuda)
        self._sessions: list[TrtSession] = []
        self._scratch = (0, 0)  # (pointer, bytes) shared by every session
        self._cache_file = (
            runtime_cache_file(Path(cache_dir), self.platform)
            if cache_dir is not None and self.toolkit.flavour == "rtx"
            else None
        )
        self._runtime_cache: Any = None  # TensorRT-RTX: one cache shared by every context

    def runtime_config(self, engine: Any, cuda_graph: bool) -> Any:
        """A TensorRT-RTX runtime config: user-managed scratch, the shared runtime cache, and
        TensorRT-RTX's own CUDA graph capture when asked for."""
        trt = self.trt
        config = engine.create_runtime_config()
        config.set_execution_context_allocation_strategy(
            trt.ExecutionContextAllocationStrategy.USER_MANAGED
        )
        if self._runtime_cache is None:
            self._runtime_cache = config.create_runtime_cache()
            if self._cache_file is not None and self._cache_file.is_file():
                # A cache from another GPU or version is ignored by TensorRT-RTX, not an error.
                self._runtime_cache.deserialize(self._cache_file.read_bytes())
        config.set_runtime_cache(self._runtime_cache)
        if cuda_graph:
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        return config

    def _check_valid(self, data: bytes, model_path: Path) -> None:
        """Ask TensorRT-RTX whether it can run the engine on this GPU, before loading it."""
        if not hasattr(self._runtime, "get_engine_validity"):
            return
        validity, diagnostics = self._runtime.get_engine_validity(data)
        if validity == self.trt.EngineValidity.INVALID:
            raise BackendError(
                f"{self.toolkit.title} cannot run '{model_path}' on this "
                f"{self.platform.gpu_name}: {_invalid_reasons(self.trt, int(diagnostics))}",
                _REBUILD,
            )

    def load(self, model_path: Path, precision: str = "fp16") -> TrtSession:
        """Deserialise one engine file into a session that uses the shared scratch memory."""
        data = Path(model_path).read_bytes()
        self._check_valid(data, Path(model_path))
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(
                f"{self.toolkit.title} could not load '{model_path}' "
                "(built by another TensorRT version, for another GPU, or damaged)",
                _REBUILD,
            )
        session = TrtSession(engine, self, self.cuda_graph)
        # Memory "low" closes and reloads sessions every generation: forget the closed ones.
        self._sessions = [s for s in self._sessions if s._context is not None]
        self._sessions.append(session)
        pointer, size = self._scratch
        if session.scratch_bytes > size:  # grow the shared block; every context moves to it
            self.cuda.synchronize()
            if pointer:
                self.cuda.free(pointer)
            self._scratch = (self.cuda.malloc(session.scratch_bytes), session.scratch_bytes)
            for s in self._sessions:
                s.use_scratch(*self._scratch)
        else:
            session.use_scratch(pointer, size)
        return session

    def close(self) -> None:
        """Save the runtime cache; free every session, the shared scratch block and the stream."""
        if self._runtime_cache is not None and self._cache_file is not None:
            try:
                atomic_write_bytes(self._cache_file, bytes(self._runtime_cache.serialize()))
            except OSError as e:  # a read-only bundle: the next run compiles again, no more
                warnings.warn(f"TensorRT-RTX's runtime cache was not saved: {e}", stacklevel=2)
        for session in self._sessions:
            session.close()
        if self._scratch[0]:
            self.cuda.free(self._scratch[0])
        self._sessions, self._scratch = [], (0, 0)
        self._runtime_cache = None
        self.cuda.close()
