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
        ("t", 5, "message", False, "TensorProto"),
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
    "ValueInfoProto": [("name", 1, "string", False, None)],
    "GraphProto": [
        ("node", 1, "message", True, "NodeProto"),
        ("initializer", 5, "message", True, "TensorProto"),
        ("output", 12, "message", True, "ValueInfoProto"),
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
