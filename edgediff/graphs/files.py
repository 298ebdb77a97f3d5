"""Saving and reading ONNX files: one external data file above 2 GB, checks, I/O specs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgediff.bundle.schema import TensorSpec

if TYPE_CHECKING:
    import onnx

# A protobuf file cannot exceed 2 GiB; above this many bytes of weights they go to one
# `model.onnx.data` file beside the graph (the margin leaves room for the graph itself).
EXTERNAL_DATA_THRESHOLD = 2**31 - 256 * 2**20


def data_file(path: Path) -> Path:
    """The one external data file a model may have: `model.onnx.data` beside `model.onnx`."""
    return path.with_name(path.name + ".data")


def save_proto(model: onnx.ModelProto, path: Path) -> tuple[Path, ...]:
    """Save a ModelProto (weights to one external data file above 2 GB); return that file if any."""
    import onnx

    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_file(path).name,
            size_threshold=1024,
        )
        return (data_file(path),)
    onnx.save_model(model, str(path))
    return ()


def check_model(path: Path) -> None:
    """onnx.checker with shape inference, on the path (a loaded proto cannot be checked > 2 GB)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def io_specs(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's inputs and outputs as manifest TensorSpecs (numpy dtype names, named dims)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in tensor_type.shape.dim)
        return TensorSpec(name=value.name, dtype=dtype, shape=shape)

    return tuple(spec(v) for v in graph.input), tuple(spec(v) for v in graph.output)
