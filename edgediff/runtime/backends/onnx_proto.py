"""The few ONNX protobuf messages the ORT backend edits, without the onnx package.

`import onnx` costs 1–4 s here (its ml_dtypes extension alone 3.3 s on this machine): more than
loading the shipped model. The runtime only rewrites a graph's nodes, so it declares the fields
it reads with their numbers from onnx.proto and lets protobuf (an ONNX Runtime dependency)
parse the file; every field not declared here is kept as an unknown field and written back
byte for byte, so a round trip loses nothing.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# AttributeProto.AttributeType values, TensorProto.DataType -> numpy.
ATTRIBUTE_FLOAT, ATTRIBUTE_INT, ATTRIBUTE_INTS = 1, 2, 7
ATTRIBUTE_STRING, ATTRIBUTE_GRAPH = 3, 5
_NUMPY = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}
_TYPED_FIELD = {1: "float_data", 6: "int32_data", 7: "int64_data", 11: "double_data"}

# message -> (field name, number, type, repeated, message type); numbers from onnx.proto.
_SCHEMA: dict[str, list[tuple[str, int, str, bool, str | None]]] = {
    "TensorProto": [
        ("dims", 1, "int64", True, None),
        ("data_type", 2, "int32", False, None),
        ("float_data", 4, "float", True, None),
        ("int32_data", 5, "int32", True, None),
        ("int64_data", 7, "int64", True, None),
        ("name", 8, "string", False, None),
        ("raw_data", 9, "bytes", False, None),
        ("double_data", 10, "double", True, None),
        ("external_data", 13, "message", True, "StringStringEntryProto"),
    ],
    "StringStringEntryProto": [
        ("key", 1, "string", False, None),
        ("value", 2, "string", False, None),
    ],
    "AttributeProto": [
        ("name", 1, "string", False, None),
        ("f", 2, "float", False, None),
        ("i", 3, "int64", False, None),
        ("s", 4, "bytes", False, None),
        ("t", 5, "message", False, "TensorProto"),
        ("g", 6, "message", False, "GraphProto"),
        ("ints", 8, "int64", True, None),
        ("type", 20, "int32", False, None),
    ],
    "NodeProto": [
        ("input", 1, "string", True, None),
        ("output", 2, "string", True, None),
        ("name", 3, "string", False, None),
        ("op_type", 4, "string", False, None),
        ("attribute", 5, "message", True, "AttributeProto"),
        ("domain", 7, "string", False, None),
    ],
    "ValueInfoProto": [
        ("name", 1, "string", False, None),
        ("type", 2, "message", False, "TypeProto"),
    ],
    "TypeProto": [("tensor_type", 1, "message", False, "TypeProtoTensor")],
    "TypeProtoTensor": [  # TypeProto.Tensor
        ("elem_type", 1, "int32", False, None),
        ("shape", 2, "message", False, "TensorShapeProto"),
    ],
    "TensorShapeProto": [("dim", 1, "message", True, "TensorShapeProtoDimension")],
    "TensorShapeProtoDimension": [  # TensorShapeProto.Dimension
        ("dim_value", 1, "int64", False, None),
        ("dim_param", 2, "string", False, None),
    ],
    "GraphProto": [
        ("node", 1, "message", True, "NodeProto"),
        ("name", 2, "string", False, None),
        ("initializer", 5, "message", True, "TensorProto"),
        ("input", 11, "message", True, "ValueInfoProto"),
        ("output", 12, "message", True, "ValueInfoProto"),
        ("value_info", 13, "message", True, "ValueInfoProto"),
    ],
    "OperatorSetIdProto": [
        ("domain", 1, "string", False, None),
        ("version", 2, "int64", False, None),
    ],
    "ModelProto": [
        ("graph", 7, "message", False, "GraphProto"),
        ("opset_import", 8, "message", True, "OperatorSetIdProto"),
    ],
}


@functools.cache
def _messages() -> dict[str, Any]:
    """Message classes built from _SCHEMA in a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fields = descriptor_pb2.FieldDescriptorProto
    types = {
        "int64": fields.TYPE_INT64,
        "int32": fields.TYPE_INT32,
        "float": fields.TYPE_FLOAT,
        "double": fields.TYPE_DOUBLE,
        "string": fields.TYPE_STRING,
        "bytes": fields.TYPE_BYTES,
        "message": fields.TYPE_MESSAGE,
    }
    package = "edgediff_onnx_subset"
    file = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package)
    file.syntax = "proto2"
    for message, declared in _SCHEMA.items():
        described = file.message_type.add(name=message)
        for name, number, kind, repeated, type_name in declared:
            field = described.field.add(name=name, number=number, type=types[kind])
            field.label = fields.LABEL_REPEATED if repeated else fields.LABEL_OPTIONAL
            if type_name:
                field.type_name = f".{package}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        for name in _SCHEMA
    }


def load_model(data: bytes) -> Any:
    """Parse an ONNX file's bytes into a ModelProto of the declared fields."""
    model = _messages()["ModelProto"]()
    model.ParseFromString(data)
    return model


def make_node(op_type: str, inputs: list[str], outputs: list[str], name: str, domain: str) -> Any:
    """A NodeProto without attributes (add them with set_int / set_float)."""
    return _messages()["NodeProto"](
        op_type=op_type, input=inputs, output=outputs, name=name, domain=domain
    )


def set_int(node: Any, name: str, value: int) -> None:
    """Add an integer attribute to a node."""
    node.attribute.add(name=name, i=value, type=ATTRIBUTE_INT)


def set_float(node: Any, name: str, value: float) -> None:
    """Add a float attribute to a node."""
    node.attribute.add(name=name, f=value, type=ATTRIBUTE_FLOAT)


def attribute(node: Any, name: str, default: Any = None) -> Any:
    """An int, float or ints attribute's value (the three kinds the rewrite reads)."""
    for found in node.attribute:
        if found.name == name:
            if found.type == ATTRIBUTE_INTS:
                return list(found.ints)
            return found.i if found.type == ATTRIBUTE_INT else found.f
    return default


def tensor_value(tensor: Any) -> np.ndarray | None:
    """A TensorProto stored in the graph as an array (None: external or of another type)."""
    dtype = _NUMPY.get(tensor.data_type)
    if dtype is None or len(tensor.external_data):
        return None
    shape = tuple(tensor.dims)
    if tensor.raw_data:
        return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(shape)
    typed = _TYPED_FIELD.get(tensor.data_type)
    if typed is None:
        return None
    return np.array(getattr(tensor, typed), dtype=dtype).reshape(shape)


# numpy -> TensorProto.DataType, for the tensors a rewrite adds.
_DATA_TYPE = {np.dtype(dtype): code for code, dtype in _NUMPY.items()}


def make_tensor(name: str, value: np.ndarray) -> Any:
    """A TensorProto holding `value` (float32, float16, float64, int32 or int64) inline."""
    value = np.asarray(value)  # not ascontiguousarray: it makes a scalar 1-D; tobytes is C order
    return _messages()["TensorProto"](
        name=name,
        dims=value.shape,
        data_type=_DATA_TYPE[value.dtype],
        raw_data=value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes(),
    )


def make_value_info(name: str, data_type: int, dims: list[int | str] | None) -> Any:
    """A ValueInfoProto of a tensor: its element type and dims (ints, or names of symbolic
    dims; None: a shape left unsaid)."""
    info = _messages()["ValueInfoProto"](name=name)
    tensor = info.type.tensor_type
    tensor.elem_type = data_type
    if dims is None:
        return info
    tensor.shape.SetInParent()  # a scalar still has a (dimensionless) shape
    for dim in dims:
        if isinstance(dim, str):
            tensor.shape.dim.add(dim_param=dim)
        else:
            tensor.shape.dim.add(dim_value=dim)
    return info


def set_string(node: Any, name: str, value: str) -> None:
    """Add a string attribute to a node."""
    node.attribute.add(name=name, s=value.encode(), type=ATTRIBUTE_STRING)


def set_graph(node: Any, name: str, nodes: list, outputs: list) -> None:
    """Add a graph attribute (an If branch): its nodes and output ValueInfoProtos; it reads
    the enclosing graph's values by name."""
    attribute = node.attribute.add(name=name, type=ATTRIBUTE_GRAPH)
    attribute.g.name = f"{node.name}/{name}"
    attribute.g.node.extend(nodes)
    attribute.g.output.extend(outputs)
