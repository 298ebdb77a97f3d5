"""ONNX Runtime backend: the CPU provider everywhere, CUDA / TensorRT providers where installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgediff.errors import BackendError

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


class OrtSession:
    """An onnxruntime.InferenceSession that casts feeds to the dtypes the model declares."""

    def __init__(self, session: Any):
        self._session = session
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())
        self._input_dtypes = {i.name: _ORT_TYPES.get(i.type) for i in session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on host arrays; returns host arrays by output name."""
        cast = {
            name: np.ascontiguousarray(value, dtype=self._input_dtypes.get(name) or value.dtype)
            for name, value in feeds.items()
        }
        outputs = self._session.run(None, cast)
        return dict(zip(self.output_names, outputs, strict=True))


class OrtBackend:
    """Loads ONNX models into ONNX Runtime sessions with the providers of one backend name."""

    array_location = "host"

    def __init__(self, name: str = "ort-cpu", threads: int | None = None):
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
        self.name = name
        self.providers = [p for p in wanted if p in available]
        self.threads = threads

    def load(self, model_path: Path) -> OrtSession:
        """Create an inference session for one ONNX file."""
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            session = ort.InferenceSession(str(model_path), options, providers=self.providers)
        except Exception as e:  # ORT raises its own exception types for unreadable models
            raise BackendError(
                f"ONNX Runtime could not load '{model_path}': {str(e).splitlines()[0]}",
                "Re-export the bundle with `edgediff export CHECKPOINT BUNDLE --force`",
            ) from None
        return OrtSession(session)
