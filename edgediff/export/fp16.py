"""fp32 ONNX -> fp16 weights and compute, float32 inputs/outputs, fp32 islands where fp16 breaks.

Uses onnxruntime's converter (onnxruntime.transformers.float16, shipped with onnxruntime).
What stays fp32, and why:
- InstanceNormalization / GroupNormalization (GroupNorm is exported as InstanceNormalization):
  their variance sums squares over whole feature maps, which overflows fp16 at real image sizes.
  LayerNormalization is kept fp16: the ONNX spec computes its statistics in fp32 (stash_type=1).
- The timestep embedding: sin/cos of `t * freq` with t up to 1000 needs fp32 arguments (fp16 has a
  step of 0.5 rad near 1000); diffusers computes it in fp32 for fp16 models too.
- Attention scores and softmax when the U-Net config asks for `upcast_attention` (SD 2.1).
Graph inputs and outputs stay float32 so the runtime feeds every precision the same arrays.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from edgediff.export.onnx_export import save_proto

if TYPE_CHECKING:
    import onnx

NORMALIZATION_OPS = ("InstanceNormalization", "GroupNormalization")
_SCORE_PATH_OPS = {"Mul", "Div", "Add", "Where", "Cast"}


def fp32_nodes(graph: onnx.GraphProto, upcast_attention: bool) -> list[str]:
    """Names of nodes that must compute in fp32: the sin/cos embedding path, attention scores."""
    producer = {out: node for node in graph.node for out in node.output}
    keep: set[str] = set()

    def ancestors(node: onnx.NodeProto) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            # Shape/Size read only the dims of their (fp16) input: nothing to keep in fp32 there.
            if n.name in keep or n.op_type in ("Shape", "Size"):
                continue
            keep.add(n.name)
            stack.extend(producer[i] for i in n.input if i in producer)

    for node in graph.node:
        if node.op_type in ("Sin", "Cos"):
            ancestors(node)
    if upcast_attention:
        for node in graph.node:
            if node.op_type != "Softmax":
                continue
            keep.add(node.name)
            # Walk back through the scaling/masking ops to the q @ k^T MatMul.
            prev = producer.get(node.input[0])
            while prev is not None and prev.op_type in _SCORE_PATH_OPS:
                keep.add(prev.name)
                prev = producer.get(prev.input[0])
            if prev is not None and prev.op_type == "MatMul":
                keep.add(prev.name)
    return sorted(keep)


def _bypass_input_casts(model: onnx.ModelProto) -> None:
    """Feed fp32 islands straight from float32 graph inputs instead of via a float16 round trip."""
    from onnx import TensorProto

    graph = model.graph
    inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None)

    to_half = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Cast" and n.input[0] in inputs and cast_to(n) == TensorProto.FLOAT16
    }
    rename: dict[str, str] = {}
    drop: set[int] = set()
    for idx, node in enumerate(graph.node):
        if (
            node.op_type == "Cast"
            and node.input[0] in to_half
            and cast_to(node) == TensorProto.FLOAT
        ):
            rename[node.output[0]] = to_half[node.input[0]]
            drop.add(idx)
    if not rename:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    used = {name for idx, n in enumerate(graph.node) if idx not in drop for name in n.input}
    for idx, node in enumerate(graph.node):
        if node.op_type == "Cast" and node.output[0] in to_half and node.output[0] not in used:
            drop.add(idx)
    kept = _detached(n for idx, n in enumerate(graph.node) if idx not in drop)
    del graph.node[:]
    graph.node.extend(kept)


def _drop_initializer_value_info(graph: onnx.GraphProto) -> None:
    """Initializers left fp32 (used only by fp32 nodes) still have value_info saying float16."""
    initializers = {t.name for t in graph.initializer}
    kept = [v for v in graph.value_info if v.name not in initializers]
    if len(kept) != len(graph.value_info):
        copies = [type(v)() for v in kept]
        for copy, v in zip(copies, kept, strict=True):
            copy.CopyFrom(v)
        del graph.value_info[:]
        graph.value_info.extend(copies)


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """The converter appends its Casts at the end; ONNX requires producers before consumers."""
    nodes = _detached(graph.node)
    produced_by = {out: idx for idx, node in enumerate(nodes) for out in node.output}
    order = _stable_topological(nodes, produced_by)
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def _detached(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Copies of repeated-field messages that stay valid after the field is cleared."""
    import onnx

    copies = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copies.append(copy)
    return copies


def _stable_topological(nodes: list[onnx.NodeProto], produced_by: dict[str, int]) -> list[int]:
    """Depth-first order that keeps each node's original position unless an input comes later."""
    placed: set[int] = set()
    order: list[int] = []
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            idx, expanded = stack.pop()
            if idx in placed:
                continue
            if expanded:
                placed.add(idx)
                order.append(idx)
                continue
            stack.append((idx, True))
            for name in reversed(nodes[idx].input):
                dep = produced_by.get(name)
                if dep is not None and dep not in placed:
                    stack.append((dep, False))
    return order


def convert_to_fp16(src: Path, dst: Path, *, upcast_attention: bool = False) -> tuple[Path, ...]:
    """Write an fp16 copy of the fp32 model at `src` to `dst`; returns its external data file(s)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    keep = fp32_nodes(onnx.load(str(src), load_external_data=False).graph, upcast_attention)
    # A path (not a proto) lets the converter run shape inference on models above 2 GB.
    model = convert_float_to_float16(
        str(src),
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *NORMALIZATION_OPS],
        node_block_list=keep,
    )
    _bypass_input_casts(model)
    _drop_initializer_value_info(model.graph)
    _sort_topologically(model.graph)
    return save_proto(model, dst)
