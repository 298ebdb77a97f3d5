"""Q/DQ models through ONNX Runtime's static quantiser, fed from recorded calibration data.

Weights are quantised per output channel, activations per tensor, both symmetric: TensorRT's
explicit quantisation takes only zero points of 0. Q/DQ pairs sit only on the inputs and
outputs of Conv, MatMul and Gemm (the ops INT8/FP8 kernels exist for, in ONNX Runtime and
TensorRT alike; an output pair lets the op write INT8 and TensorRT fuses it into the op).
Biases stay float: TensorRT has no INT32 dequantisation and fuses a float bias itself.
Attention's two products of activations stay float (sensitivity.attention_products: quantised,
they made the shipped U-Net's INT8 call 1.8–2.6× slower on ONNX Runtime and less accurate).

FP8 (E4M3) activation scales are amax / 448 from the same min/max calibration INT8 uses, the
convention TensorRT's FP8 tooling follows. ONNX Runtime's own FP8 path accepts only its
Distribution calibrator, whose scales match standard deviations and clip the outliers
diffusion activations carry (final latents of the shapes U-Net: 25.8 dB against 32.5 dB), so
its scales are replaced through the quantiser's documented TensorQuantOverrides option.
(Weights keep ONNX Runtime's per-channel FP8 scales: amax / 448 per channel measured the same
PSNR there.)
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.bundle.schema import QUANTIZED_PRECISIONS, QuantSettings
from edgediff.errors import EdgediffError, InputError

FP8_E4M3_MAX = 448.0


def ort_arguments(settings: QuantSettings) -> dict[str, Any]:
    """Keyword arguments for onnxruntime.quantization.quantize_static."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return {
        "quant_format": QuantFormat.QDQ,
        "activation_type": getattr(QuantType, settings.activation_type or settings.quant_type),
        "weight_type": getattr(QuantType, settings.quant_type),
        "calibrate_method": getattr(CalibrationMethod, settings.calibrate_method),
        "per_channel": settings.per_channel,
        "reduce_range": settings.reduce_range,
        "op_types_to_quantize": list(settings.op_types),
        "extra_options": {
            "ActivationSymmetric": settings.symmetric and settings.activation_type is None,
            "WeightSymmetric": settings.symmetric,
            "QuantizeBias": settings.quantize_bias,
            # A tensor feeding a Conv and an Add gets its own Q/DQ pair for the Conv; the
            # Add keeps reading float, so DQ outputs feed only quantised ops.
            "DedicatedQDQPair": True,
        },
    }


SETTINGS = {
    "int8": QuantSettings("int8", "QInt8", "MinMax", "calibrator"),
    "fp8": QuantSettings("fp8", "QFLOAT8E4M3FN", "Distribution", "amax"),
}
PRECISIONS = QUANTIZED_PRECISIONS


TARGETS = ("tensorrt", "cpu")


def settings_for(precision: str, target: str = "tensorrt") -> QuantSettings:
    """The quantisation settings of a precision for a target, or a clear error.

    "tensorrt" (symmetric INT8 activations) runs everywhere, TensorRT included. "cpu" gives
    INT8 activations as asymmetric uint8, the only activations ONNX Runtime's fast integer
    kernels take on x86 CPUs without VNNI (benchmarks/quant_cpu.py: SD 1.5 U-Net 1.56x faster
    than fp32, against 1.21x; with AVX-512 VNNI at 512², 1.95x against 1.69x); TensorRT refuses
    its non-zero zero points.
    """
    if precision not in SETTINGS:
        raise InputError(f"unknown precision '{precision}'", f"Use one of: {', '.join(PRECISIONS)}")
    if target not in TARGETS:
        raise InputError(f"unknown target '{target}'", f"Use one of: {', '.join(TARGETS)}")
    if target == "cpu":
        if precision != "int8":
            raise InputError(
                f"--target cpu is for int8 ({precision} runs on TensorRT only)",
                "Use --target tensorrt, or --precision int8",
            )
        # Without VNNI, uint8 x int8 products are summed in pairs into saturating int16
        # (vpmaddubsw): 7-bit weights keep those sums exact.
        return replace(SETTINGS["int8"], activation_type="QUInt8", reduce_range=True, target="cpu")
    return SETTINGS[precision]


def quantizer_version() -> str:
    """Which quantiser wrote a model, for the manifest."""
    import onnxruntime

    return f"onnxruntime.quantization {onnxruntime.__version__}"


def require_onnx() -> None:
    """Fail with the install command when the quantiser's onnx dependency is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
        raise EdgediffError(
            f"quantisation needs onnx and onnxruntime ({e.name} is not installed)",
            "pip install 'edgediff[cpu,quant]'",
        ) from None


class RecordedInputs:
    """Recorded calls of one component, memory-mapped from .npy files, one call at a time."""

    def __init__(self, arrays: dict[str, Path]):
        self._arrays = {k: np.load(p, mmap_mode="r") for k, p in arrays.items()}
        counts = {len(a) for a in self._arrays.values()}
        if len(counts) != 1:
            raise InputError(
                "recorded calibration inputs differ in call count",
                "Record them again with `edgediff calibrate BUNDLE --force`",
            )
        self.calls = counts.pop()

    def feeds(self, index: int) -> dict[str, np.ndarray]:
        """The feeds of call `index`."""
        return {k: np.ascontiguousarray(a[index]) for k, a in self._arrays.items()}

    def reader(self):
        """A fresh onnxruntime CalibrationDataReader over every call."""
        from onnxruntime.quantization import CalibrationDataReader

        calls = iter(range(self.calls))
        feeds = self.feeds

        class _Reader(CalibrationDataReader):
            def get_next(self) -> dict[str, np.ndarray] | None:
                index = next(calls, None)
                return None if index is None else feeds(index)

        return _Reader()


class Quantizer:
    """Quantises one fp32 model repeatedly (different nodes kept), calibrating it only once."""

    def __init__(self, model: Path, inputs: RecordedInputs, settings: QuantSettings):
        self.model = model
        self.inputs = inputs
        self.settings = settings
        self._dir = tempfile.TemporaryDirectory(prefix="edgediff-quant-")
        self._overrides: dict[str, list[dict[str, Any]]] | None = None
        # Above 2 GB of weights (SD-size U-Nets) every model on the way needs external data.
        self.external_data = model.with_name(model.name + ".data").exists()

    def close(self) -> None:
        """Delete the cached calibration ranges."""
        self._dir.cleanup()

    def __enter__(self) -> Quantizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _cache(self, method: str) -> Path:
        return Path(self._dir.name) / f"ranges-{method}.json"

    def _amax_overrides(self) -> dict[str, list[dict[str, Any]]]:
        """Per-tensor FP8 scales amax / 448 from min/max calibration (computed once)."""
        if self._overrides is None:
            from ml_dtypes import float8_e4m3fn
            from onnxruntime.quantization.calibrate import load_tensors_data

            self.write(Path(self._dir.name) / "minmax.onnx", settings=SETTINGS["int8"])
            ranges = load_tensors_data(self._cache("MinMax"))
            zero = np.array(0, dtype=float8_e4m3fn)
            self._overrides = {}
            for name, r in ranges.data.items():
                amax = max(float(np.max(np.abs(np.asarray(v)))) for v in r.range_value)
                scale = np.array(max(amax, 1e-12) / FP8_E4M3_MAX, dtype=np.float32)
                self._overrides[name] = [{"scale": scale, "zero_point": zero}]
        return self._overrides

    def write(
        self,
        out: Path,
        keep: list[str] = (),
        only: list[str] | None = None,
        settings: QuantSettings | None = None,
    ) -> None:
        """Write the Q/DQ model to `out`; `keep` nodes stay float; `only` quantises just those.

        With external data, weights go to `<out name>.data` beside it.
        """
        from onnxruntime.quantization import quantize_static

        from edgediff.calibration.sensitivity import attention_products

        settings = settings or self.settings
        arguments = ort_arguments(settings)
        if settings.activation_scales == "amax":
            arguments["extra_options"]["TensorQuantOverrides"] = self._amax_overrides()
        cache = self._cache(settings.calibrate_method)
        with _quiet():
            quantize_static(
                str(self.model),
                str(out),
                None if cache.exists() else self.inputs.reader(),
                nodes_to_quantize=list(only) if only is not None else None,
                nodes_to_exclude=[*keep, *attention_products(self.model)],
                calibration_cache_path=str(cache),
                use_external_data_format=self.external_data,
                **arguments,
            )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the quantiser's advice (pre-processing, opset upgrade) and calibrator prints,
    which say nothing a user of `edgediff quantize` can act on; errors still raise."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
