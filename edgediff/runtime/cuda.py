"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python (no torch).

cuda-python moved its runtime module from `cuda.cudart` (12.x, removed in 13.0) to
`cuda.bindings.runtime` (12.6.1 on); both are accepted so JetPack 6 (CUDA 12.2/12.6) and CUDA 13
machines work alike. Every call returns (error, *results); `_check` turns errors into
BackendErrors that name the call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgediff.errors import BackendError


def import_cudart() -> Any:
    """cuda-python's runtime module, or a BackendError saying how to install it."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendError(
                "the TensorRT backend needs cuda-python, which is not installed",
                "pip install 'edgediff[trt]' or 'edgediff[trt-rtx]' (on Jetson: pip install "
                "'cuda-python==12.6.*' to match JetPack 6's CUDA)",
            ) from None
    return cudart


def _check(cudart: Any, what: str, result: Any) -> Any:
    """Raise on a CUDA error; return the call's results (None, one value or a tuple)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, message = cudart.cudaGetErrorString(err)
        text = message.decode() if isinstance(message, bytes) else str(message)
        raise BackendError(f"CUDA {what} failed: {text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def handle(obj: Any) -> int:
    """The integer handle of a CUDA object (stream, graph), as TensorRT's API takes it."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


class Cuda:
    """One device and one stream; device buffers, copies and CUDA graphs on that stream."""

    def __init__(self, device: int = 0):
        self.rt = import_cudart()
        err, count = self.rt.cudaGetDeviceCount()
        if err != self.rt.cudaError_t.cudaSuccess:
            count = 0  # no driver, or a driver older than this CUDA: no usable GPU either way
        if device >= count:
            raise BackendError(
                f"no CUDA GPU {device} on this machine ({count} found)",
                "Run on a machine with an NVIDIA GPU and its driver, or use --backend ort-cpu",
            )
        _check(self.rt, "cudaSetDevice", self.rt.cudaSetDevice(device))
        self.device = device
        self.stream = _check(self.rt, "cudaStreamCreate", self.rt.cudaStreamCreate())

    def gpu(self) -> tuple[str, str]:
        """(GPU name, compute capability "major.minor") of the device."""
        prop = _check(
            self.rt, "cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(self.device)
        )
        name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
        return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"

    def malloc(self, nbytes: int) -> int:
        """Device pointer to `nbytes` (at least one byte, so every buffer has an address)."""
        return int(_check(self.rt, "cudaMalloc", self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, pointer: int) -> None:
        """Release a pointer from malloc."""
        _check(self.rt, "cudaFree", self.rt.cudaFree(pointer))

    def upload(self, pointer: int, array: np.ndarray) -> None:
        """Copy a C-contiguous host array to device memory, queued on the stream."""
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        call = self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, self.stream)
        _check(self.rt, "host-to-device copy", call)

    def download(self, array: np.ndarray, pointer: int) -> None:
        """Copy device memory into a C-contiguous host array, queued on the stream."""
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        call = self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, self.stream)
        _check(self.rt, "device-to-host copy", call)

    def synchronize(self) -> None:
        """Wait for everything queued on the stream."""
        _check(self.rt, "cudaStreamSynchronize", self.rt.cudaStreamSynchronize(self.stream))

    def capture(self, enqueue: Any) -> Any:
        """Record what `enqueue()` queues on the stream as an executable CUDA graph."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        _check(self.rt, "cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture(self.stream, mode))
        try:
            enqueue()
        finally:
            graph = _check(
                self.rt, "cudaStreamEndCapture", self.rt.cudaStreamEndCapture(self.stream)
            )
        try:
            return _check(self.rt, "cudaGraphInstantiate", self.rt.cudaGraphInstantiate(graph, 0))
        finally:
            self.rt.cudaGraphDestroy(graph)  # the executable graph does not need its template

    def launch(self, graph_exec: Any) -> None:
        """Replay a captured graph on the stream."""
        _check(self.rt, "cudaGraphLaunch", self.rt.cudaGraphLaunch(graph_exec, self.stream))

    def destroy_graph(self, graph_exec: Any) -> None:
        """Release a graph from capture()."""
        _check(self.rt, "cudaGraphExecDestroy", self.rt.cudaGraphExecDestroy(graph_exec))

    def close(self) -> None:
        """Wait for the stream's work, then destroy the stream."""
        if self.stream is None:
            return
        self.synchronize()
        _check(self.rt, "cudaStreamDestroy", self.rt.cudaStreamDestroy(self.stream))
        self.stream = None
