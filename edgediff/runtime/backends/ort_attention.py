"""Attention for ONNX Runtime: each exported scaled-dot-product attention as one fused op.

The bundle's graphs spell attention out as torch exports it: MatMul(Q·s, Kᵀ·s) -> Softmax ->
MatMul(·, V), with the heads split and merged by Reshape/Transpose around it. ONNX Runtime runs
that as written, materialising the batch×heads×N×N scores and their softmax: 1 GiB each for
SD 1.5 at 512² (N = 4096 tokens), 16 GiB at 1024². Its com.microsoft MultiHeadAttention op
computes the same thing tile by tile (flash attention on the CPU) and never holds N². TensorRT
fuses the spelled-out form itself, so the bundle keeps it and only the ORT backend lowers it,
at load time, on the graph alone (external weights are never read here).
"""

from __future__ import annotations

from typing import Any

from edgediff.runtime.backends import onnx_proto
from edgediff.runtime.backends.onnx_proto import attribute as _attr

# perm that splits (B, S, H, d) <-> (B, H, S, d)
_HEADS_PERM = [0, 2, 1, 3]
_MS_DOMAIN = "com.microsoft"


def fuse_attention(model: Any) -> int:
    """Replace each spelled-out attention of a ModelProto (onnx_proto) by MultiHeadAttention,
    in place; return how many were fused. Patterns that differ from torch's export stay."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = _constants(graph)
    fused: dict[int, Any] = {}  # id of the node a fused op replaces -> the fused op
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        found = _match(softmax, producers, consumers, constants)
        if found is not None:
            merge, attention = found
            fused[id(merge)] = attention
    if not fused:
        return 0
    nodes = _live([fused.get(id(n), n) for n in graph.node], {o.name for o in graph.output})
    del graph.node[:]
    graph.node.extend(nodes)
    # The scale and shape constants of the fused ops (ORT warns about each one left unused).
    read = {name for node in nodes for name in node.input}
    unused = [t for t in graph.initializer if t.name not in read]
    for tensor in unused:
        graph.initializer.remove(tensor)
    if not any(o.domain == _MS_DOMAIN for o in model.opset_import):
        model.opset_import.add(domain=_MS_DOMAIN, version=1)
    return len(fused)


def _match(
    softmax: Any, producers: dict, consumers: dict, constants: dict
) -> tuple[Any, Any] | None:
    """(the Reshape that merges the heads, the MultiHeadAttention that replaces all up to it)."""
    if _attr(softmax, "axis", -1) not in (-1, 3):
        return None
    scores = producers.get(softmax.input[0])
    after = consumers.get(softmax.output[0], [])
    if scores is None or scores.op_type != "MatMul" or len(after) != 1:
        return None
    weighted = after[0]
    if weighted.op_type != "MatMul" or weighted.input[0] != softmax.output[0]:
        return None
    merge_t = _only_consumer(weighted, consumers, "Transpose")
    if merge_t is None or _attr(merge_t, "perm") != _HEADS_PERM:
        return None
    merge = _only_consumer(merge_t, consumers, "Reshape")
    if merge is None:
        return None
    q_scaled, k_scaled = (producers.get(name) for name in scores.input)
    q_scale, q_heads = _scaled(q_scaled, producers, constants)
    k_scale, k_heads = _scaled(k_scaled, producers, constants)
    v_heads = producers.get(weighted.input[1])
    if None in (q_scale, k_scale, q_heads, k_heads, v_heads):
        return None
    q = _split_heads_input(q_heads, producers)
    k = _split_heads_input(_first_split(k_heads, producers), producers)
    v = _split_heads_input(v_heads, producers)
    heads = _head_count(q_heads, producers, constants)
    if None in (q, k, v, heads):
        return None
    name = softmax.name.rsplit("/", 1)[0] + "/MultiHeadAttention"
    attention = onnx_proto.make_node(
        "MultiHeadAttention", [q, k, v], [merge.output[0]], name, _MS_DOMAIN
    )
    onnx_proto.set_int(attention, "num_heads", heads)
    onnx_proto.set_float(attention, "scale", q_scale * k_scale)
    return merge, attention


def _scaled(node: Any, producers: dict, constants: dict) -> tuple[float | None, Any]:
    """(the scalar a Mul multiplies by, the node it multiplies) or (None, None)."""
    if node is None or node.op_type != "Mul":
        return None, None
    value = constants.get(node.input[1])
    if value is None or value.size != 1:
        return None, None
    return float(value.reshape(())), producers.get(node.input[0])


def _split_heads_input(node: Any, producers: dict) -> str | None:
    """The (B, S, H·d) tensor a Transpose(Reshape(x)) to (B, H, S, d) splits into heads."""
    if node is None or node.op_type != "Transpose" or _attr(node, "perm") != _HEADS_PERM:
        return None
    reshape = producers.get(node.input[0])
    return reshape.input[0] if reshape is not None and reshape.op_type == "Reshape" else None


def _first_split(node: Any, producers: dict) -> Any:
    """Kᵀ: walk back through the Reshape/Transpose chain torch exports for K.transpose(-2, -1)
    to the Transpose that split K into heads."""
    for _ in range(8):
        if node is None or node.op_type not in ("Reshape", "Transpose"):
            return None
        if node.op_type == "Transpose" and _attr(node, "perm") == _HEADS_PERM:
            return node
        node = producers.get(node.input[0])
    return None


def _head_count(q_heads: Any, producers: dict, constants: dict) -> int | None:
    """H, read from the shape (B, S, H, d) the query is reshaped to."""
    reshape = producers.get(q_heads.input[0])
    shape = constants.get(reshape.input[1])
    if shape is not None and shape.size == 4:
        return int(shape.reshape(-1)[2])
    concat = producers.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
        return None
    value = constants.get(concat.input[2])
    heads = None if value is None or value.size != 1 else int(value.reshape(()))
    return heads if heads and heads > 0 else None


def _only_consumer(node: Any, consumers: dict, op_type: str) -> Any:
    users = consumers.get(node.output[0], [])
    return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _constants(graph: Any) -> dict:
    """Small constant tensors by name (initializers stored inline and Constant nodes)."""
    tensors = [(t.name, t) for t in graph.initializer]
    tensors += [
        (node.output[0], a.t)
        for node in graph.node
        if node.op_type == "Constant"
        for a in node.attribute
        if a.name == "value"
    ]
    values = {}
    for name, tensor in tensors:
        if len(tensor.dims) <= 1 and sum(tensor.dims) <= 16:
            value = onnx_proto.tensor_value(tensor)
            if value is not None:
                values[name] = value
    return values


def _live(nodes: list, outputs: set[str]) -> list:
    """The nodes something still reads, in their order (the fused ops orphan the rest)."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
    return keep[::-1]
