"""TensorRT backend: engines built by `edgediff build`, run through the name-based tensor API.

Written against TensorRT 8.6 to 11 (set_input_shape / set_tensor_address / execute_async_v3)
and cuda-python; no torch. Each session keeps one device buffer per tensor, grown only when a
bigger shape arrives, so the denoising loop allocates nothing after its first step. All
engines of a backend share one block of scratch (activation) memory, sized for the largest,
because the pipeline runs them one after another on one stream. A session whose engine has
only static shapes can capture its launch as a CUDA graph and replay it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgediff.errors import BackendError
from edgediff.runtime.backends.base import unchanged
from edgediff.runtime.cuda import Cuda, handle
from edgediff.runtime.engine_compat import Platform, require_in_profile

_REBUILD = "Rebuild the bundle's engines on this device: edgediff build BUNDLE --force"


def import_tensorrt() -> Any:
    """The tensorrt module, or a BackendError saying how to install it."""
    try:
        import tensorrt
    except ImportError:
        raise BackendError(
            "TensorRT's Python package is not installed",
            "On a desktop: pip install 'edgediff[trt]'. On Jetson it comes with JetPack: "
            "sudo apt install python3-libnvinfer, with a venv made by "
            "`python3 -m venv --system-site-packages`",
        ) from None
    return tensorrt


def platform_of(cuda: Cuda) -> Platform:
    """The TensorRT version here and the GPU `cuda` drives: what an engine must be built for."""
    gpu_name, capability = cuda.gpu()
    return Platform(import_tensorrt().__version__, gpu_name, capability)


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
        if hasattr(engine, "device_memory_size_v2"):  # TensorRT 10.1 and later
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
        self._use_graph = cuda_graph and all(lo == hi for lo, hi in self._ranges.values())
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
        self._graph = None  # a captured graph holds the old addresses

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy feeds to the device, run the engine, return host copies of the outputs."""
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
            self._graph = None
            self._held.pop(name, None)  # a new buffer holds nothing yet
        return pointer

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(handle(self._cuda.stream)):
            raise BackendError("TensorRT failed to run the engine (see its log above)", _REBUILD)

    def close(self) -> None:
        """Free the device buffers."""
        self._cuda.synchronize()
        for pointer, _ in self._buffers.values():
            self._cuda.free(pointer)
        self._buffers.clear()


class TrtBackend:
    """Loads TensorRT engines onto one GPU; `platform` is what engines must have been built for."""

    name = "trt"
    array_location = "host"
    model_format = "engine"

    def __init__(self, device_id: int = 0, cuda_graph: bool = False):
        self.trt = import_tensorrt()
        self.cuda = Cuda(device_id)
        self.cuda_graph = cuda_graph
        self._logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(self._logger)
        self.platform = platform_of(self.cuda)
        self._sessions: list[TrtSession] = []
        self._scratch = (0, 0)  # (pointer, bytes) shared by every session

    def load(self, model_path: Path, precision: str = "fp16") -> TrtSession:
        """Deserialise one engine file into a session that uses the shared scratch memory."""
        engine = self._runtime.deserialize_cuda_engine(Path(model_path).read_bytes())
        if engine is None:
            raise BackendError(
                f"TensorRT {self.platform.tensorrt_version} could not load '{model_path}' "
                "(built by another TensorRT version, for another GPU, or damaged)",
                _REBUILD,
            )
        session = TrtSession(engine, self, self.cuda_graph)
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
        """Free every session's buffers and the shared scratch block."""
        for session in self._sessions:
            session.close()
        if self._scratch[0]:
            self.cuda.free(self._scratch[0])
        self._sessions, self._scratch = [], (0, 0)
