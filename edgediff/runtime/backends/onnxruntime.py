"""ONNX Runtime backend: the CPU provider everywhere, CUDA / TensorRT providers where installed.

On a GPU provider every input and output lives in a device buffer that is allocated once per
shape and reused on every call (ONNX Runtime's IO binding), so the weights, the text
embeddings and the U-Net's buffers stay on the GPU across the denoising loop and only the
latents cross the bus: the numpy scheduler needs them on the host between steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.bundle.schema import QUANTIZED_PRECISIONS
from edgediff.errors import BackendError
from edgediff.runtime.backends.base import unchanged

# Backend name -> execution providers in priority order (ORT falls back along the list).
PROVIDERS: dict[str, tuple[str, ...]] = {
    "ort-cpu": ("CPUExecutionProvider",),
    "ort-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "ONNX Runtime is not installed",
            "Install one build: pip install 'edgediff[cpu]' (CPU) or 'edgediff[gpu]' (CUDA)",
        ) from None
    return onnxruntime


@contextlib.contextmanager
def _ort_errors() -> Iterator[None]:
    """ONNX Runtime's own exceptions (bad shapes, out of memory) as one-line BackendErrors."""
    try:
        yield
    except Exception as e:  # ORT's own exception types (InvalidArgument, Fail, ...) are bare
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendError(
            f"ONNX Runtime could not run the model: {first}",
            "If memory ran out, ask for fewer or smaller images; otherwise check the bundle "
            "with `edgediff info` and re-export it if its manifest and models disagree",
        ) from None


class OrtSession:
    """An onnxruntime.InferenceSession that casts feeds to the dtypes the model declares."""

    def __init__(self, session: Any):
        self._session = session
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())
        self._input_dtypes = {i.name: _ORT_TYPES.get(i.type) for i in session.get_inputs()}

    def _cast(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            name: np.ascontiguousarray(value, dtype=self._input_dtypes.get(name) or value.dtype)
            for name, value in feeds.items()
        }

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on host arrays; returns host arrays by output name."""
        session = self._live()
        with _ort_errors():
            outputs = session.run(None, self._cast(feeds))
        return dict(zip(self.output_names, outputs, strict=True))

    def _live(self) -> Any:
        if self._session is None:
            raise BackendError("this model's session was closed", "Load the pipeline again")
        return self._session

    def close(self) -> None:
        """Release the ONNX Runtime session (its weights and arenas)."""
        self._session = None


class BoundOrtSession(OrtSession):
    """A session whose inputs and outputs sit in device buffers kept from call to call.

    Buffers are made for each new set of input shapes (the first call at a shape lets ONNX
    Runtime size the outputs) and reused while shapes repeat: a call copies the feeds into
    them, runs, and copies the outputs back. Fixed addresses are what CUDA-graph replay needs.
    """

    def __init__(self, session: Any, device: str, device_id: int = 0):
        super().__init__(session)
        self._ort = _import_onnxruntime()
        self._device = (device, device_id)
        self._binding = session.io_binding()
        self._shapes: tuple | None = None
        self._inputs: dict[str, Any] = {}
        self._outputs: list[Any] | None = None
        self._held: dict[str, np.ndarray] = {}  # the last call's feeds

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy feeds into the bound device buffers, run, return host copies of the outputs."""
        self._live()
        feeds = self._cast(feeds)
        shapes = tuple((name, feeds[name].shape) for name in self.input_names)
        if shapes != self._shapes:
            self._bind_new_shapes(feeds)
            self._shapes = shapes
        else:
            for name in self.input_names:
                if not unchanged(feeds[name], self._held.get(name)):
                    self._inputs[name].update_inplace(feeds[name])
        self._held = feeds
        with _ort_errors():
            self._live().run_with_iobinding(self._binding)
        if self._outputs is None:  # first call at these shapes: keep what ORT allocated
            self._outputs = self._binding.get_outputs()
            for name, value in zip(self.output_names, self._outputs, strict=True):
                self._binding.bind_ortvalue_output(name, value)
        # On the CPU, numpy() is a view of the bound buffer the next call overwrites.
        copy = self._device[0] == "cpu"
        return {
            n: np.array(v.numpy(), copy=copy)
            for n, v in zip(self.output_names, self._outputs, strict=True)
        }

    def _bind_new_shapes(self, feeds: dict[str, np.ndarray]) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        for name in self.input_names:
            # A copy: on the CPU device the OrtValue would otherwise wrap (and later be
            # overwritten through) the caller's array.
            value = self._ort.OrtValue.ortvalue_from_numpy(feeds[name].copy(), *self._device)
            self._binding.bind_ortvalue_input(name, value)
            self._inputs[name] = value
        for name in self.output_names:
            self._binding.bind_output(name, *self._device)
        self._outputs = None

    def close(self) -> None:
        """Release the device buffers and the session."""
        self._inputs, self._outputs, self._held, self._shapes = {}, None, {}, None
        self._binding = None
        super().close()


class OrtBackend:
    """Loads ONNX models into ONNX Runtime sessions with the providers of one backend name.

    `io_binding` keeps inputs and outputs in buffers reused across calls (default: on for the
    GPU backends). `cuda_graph` has ort-cuda capture each model's first run and replay it; it
    needs fixed input shapes for the life of the session. `cache_dir` is where ort-trt keeps
    the TensorRT engines and timing cache its execution provider builds. `spin` False stops
    ONNX Runtime's idle worker threads from spinning for new work (None: its default, on),
    which is what a process that shares its cores with other work (a server) wants.
    """

    array_location = "host"
    model_format = "onnx"

    def __init__(
        self,
        name: str = "ort-cpu",
        threads: int | None = None,
        io_binding: bool | None = None,
        cuda_graph: bool = False,
        cache_dir: str | Path | None = None,
        device_id: int = 0,
        spin: bool | None = None,
    ):
        ort = _import_onnxruntime()
        if name not in PROVIDERS:
            raise BackendError(
                f"unknown ONNX Runtime backend '{name}'", f"Use {', '.join(PROVIDERS)}"
            )
        wanted = PROVIDERS[name]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise BackendError(
                f"backend '{name}' needs ONNX Runtime's {wanted[0]}, which this onnxruntime "
                f"build lacks (it has {', '.join(available)})",
                "Install onnxruntime-gpu (pip install 'edgediff[gpu]', after uninstalling "
                "onnxruntime) on a machine with an NVIDIA GPU, or use --backend ort-cpu",
            )
        if cuda_graph and name != "ort-cuda":
            raise BackendError(f"CUDA graphs are an ort-cuda option, not {name}'s")
        self.name = name
        self.threads = threads
        self.device_id = device_id
        self.io_binding = name != "ort-cpu" if io_binding is None else io_binding
        self.cuda_graph = cuda_graph
        self.cache_dir = cache_dir
        self.spin = spin
        self.providers = [p for p in wanted if p in available]
        self._sessions: list[OrtSession] = []

    def load(self, model_path: Path, precision: str = "fp32") -> OrtSession:
        """Create an inference session for one ONNX file (`precision` as the bundle names it)."""
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        if self.spin is not None:
            options.add_session_config_entry(
                "session.intra_op.allow_spinning", "1" if self.spin else "0"
            )
        try:
            providers = [
                (p, provider_options(p, precision, self.cuda_graph, self.cache_dir, self.device_id))
                for p in self.providers
            ]
            session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as e:  # ORT raises its own exception types for unreadable models
            raise BackendError(
                f"ONNX Runtime could not load '{model_path}': {str(e).splitlines()[0]}",
                "Re-export the bundle with `edgediff export CHECKPOINT BUNDLE --force`",
            ) from None
        if not self.io_binding:
            loaded = OrtSession(session)
        else:
            device = "cpu" if self.name == "ort-cpu" else "cuda"
            loaded = BoundOrtSession(session, device, self.device_id)
        self._sessions.append(loaded)
        return loaded

    def close(self) -> None:
        """Release every session this backend loaded."""
        for session in self._sessions:
            session.close()
        self._sessions.clear()


def provider_options(
    provider: str, precision: str, cuda_graph: bool, cache_dir: str | Path | None, device_id: int
) -> dict[str, str]:
    """ONNX Runtime options for one execution provider and one model of an edgediff backend."""
    if provider == "CUDAExecutionProvider":
        return {"device_id": str(device_id), "enable_cuda_graph": str(int(cuda_graph))}
    if provider == "TensorrtExecutionProvider":
        options = {"device_id": str(device_id)}
        if precision not in QUANTIZED_PRECISIONS:
            options["trt_fp16_enable"] = "True"
        # Q/DQ models get no precision flags: with TensorRT 10 the EP then builds a strongly
        # typed network that runs each layer in the type its Q/DQ pairs give it.
        if cache_dir is not None:
            try:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BackendError(
                    f"ort-trt cannot create its engine cache '{cache_dir}' ({e.strerror})",
                    "Copy the bundle to a folder you can write to and load it from there",
                ) from None
            options.update(
                trt_engine_cache_enable="True",
                trt_engine_cache_path=str(cache_dir),
                trt_timing_cache_enable="True",
                trt_timing_cache_path=str(cache_dir),
            )
        return options
    return {}
