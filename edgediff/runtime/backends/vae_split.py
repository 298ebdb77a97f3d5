"""A VAE graph cut into the part tiles can run and the part that must see the whole image.

Stable Diffusion's VAE has one attention, in its mid-block, at latent resolution: every latent
pixel attends to every other. Run on a tile, it attends to the tile only, and no sharing of
GroupNorm statistics makes up for it (SD 1.5's decoder at random weights: 28.5 dB plain tiles,
30.7 dB with shared statistics). That part is also small: it runs at latent resolution, on
1/64 of the pixels (for a 2048² image it took 1.32 GiB and 50 s on 2 cores). So the decoder is cut
after its mid-block (the whole latent runs through it once, tiles run the up-blocks) and the
encoder before its mid-block (tiles run the down-blocks, the blended features run the rest).

The cut is made on the graph alone (onnx_proto) at the first node named after the first
tiled or last global block (the exporter names nodes by module). One tensor crosses it,
renamed FEATURES. Shape arithmetic the second part reads from the first (the encoder's
mid-block reshapes by the image's H/8 and W/8) is copied into the second part, which then
also takes the graph input those shapes come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgediff.runtime.backends import onnx_proto

FEATURES = "tile_features"
_FLOAT = 1  # TensorProto.DataType
# The ops a shape computation may use: the copy into the second part must stay cheap.
_SHAPE_OPS = frozenset(
    {"Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Constant",
     "Mul", "Div", "Add", "Sub", "Floor", "Ceil", "Identity", "Reshape"}
)  # fmt: skip
_ATTENTION_OPS = frozenset({"Softmax", "MultiHeadAttention"})


@dataclass
class VaeParts:
    """A VAE as the part tiles run and the part run on the whole image (None: nothing
    global), as ModelProtos, serialized graphs, sessions or calls; FEATURES passes between
    them. The decoder's whole part runs first, on the latents; the encoder's last, on the
    blended features and the images (whose shape its reshapes read)."""

    tiled: Any
    whole: Any | None = None
    whole_first: bool = True

    def close(self) -> None:
        """Close both parts' sessions."""
        for part in (self.tiled, self.whole):
            if part is not None:
                part.close()


def split_global_attention(model: Any) -> VaeParts:
    """A VAE ModelProto (onnx_proto) cut around its mid-block when that holds attention;
    else the model whole as the tiled part (no attention, or no cut this module knows)."""
    nodes = list(model.graph.node)
    up = _first(nodes, "decoder.up_blocks.")
    if up is not None and _has_attention(nodes[:up]):
        head, tail = _cut(model, up, tail_takes_inputs=False)
        if head is not None:
            return VaeParts(tiled=tail, whole=head, whole_first=True)
    mid = _first(nodes, "encoder.mid_block.")
    if mid is not None and _has_attention(nodes[mid:]):
        head, tail = _cut(model, mid, tail_takes_inputs=True)
        if head is not None:
            return VaeParts(tiled=head, whole=tail, whole_first=False)
    return VaeParts(tiled=model)


def _first(nodes: list, prefix: str) -> int | None:
    return next((i for i, n in enumerate(nodes) if n.name.startswith(prefix)), None)


def _has_attention(nodes: list) -> bool:
    return any(n.op_type in _ATTENTION_OPS for n in nodes)


def _cut(model: Any, index: int, tail_takes_inputs: bool) -> tuple[Any, Any] | tuple[None, None]:
    """(head, tail) ModelProtos: nodes before `index`, and from it; (None, None) when more
    than one tensor other than shape arithmetic crosses the cut. The tail takes the graph's
    inputs its shape arithmetic reads, or all of them (used or not) if `tail_takes_inputs`."""
    graph = model.graph
    nodes = list(graph.node)
    first, second = nodes[:index], nodes[index:]
    producers = {out: node for node in first for out in node.output}
    graph_inputs = {i.name for i in graph.input}
    initializers = {t.name for t in graph.initializer}
    known = producers.keys() | graph_inputs
    crossing = sorted({name for node in second for name in node.input if name in known})
    copied: list[Any] = []
    shape_inputs: set[str] = set()
    features = []
    for name in crossing:
        chain = _shape_chain(name, producers, initializers, graph_inputs)
        if chain is None:
            features.append(name)
        else:
            copied.extend(node for node in chain if node not in copied)
            shape_inputs |= {i for node in chain for i in node.input if i in graph_inputs}
    if len(features) != 1:
        return None, None
    (crossing_tensor,) = features
    head = _subgraph(model, first, [i for i in graph.input if _reads(first, i.name)])
    head.graph.node.append(onnx_proto.make_node("Identity", [crossing_tensor], [FEATURES], "", ""))
    head.graph.output.append(_features_info())
    tail_nodes = [
        onnx_proto.make_node("Identity", [FEATURES], [crossing_tensor], "", ""),
        *[n for n in nodes if n in copied],  # graph order keeps them topological
        *second,
    ]
    taken = [i for i in graph.input if tail_takes_inputs or i.name in shape_inputs]
    tail_inputs = [_features_info(), *taken]
    tail = _subgraph(model, tail_nodes, tail_inputs)
    tail.graph.output.extend(graph.output)
    return head, tail


def _shape_chain(
    name: str, producers: dict, initializers: set[str], graph_inputs: set[str]
) -> list | None:
    """The nodes computing `name` from graph inputs' shapes and constants alone; None when it
    depends on any tensor's values."""
    if name in graph_inputs:
        return None
    chain: list[Any] = []
    pending = [name]
    seen: set[str] = set()
    while pending:
        value = pending.pop()
        if value in seen or value in initializers or not value:
            continue
        seen.add(value)
        node = producers.get(value)
        if node is None or node.op_type not in _SHAPE_OPS:
            return None
        chain.append(node)
        if node.op_type == "Shape":
            if node.input[0] not in graph_inputs:  # a shape of an intermediate tensor
                return None
            continue
        pending.extend(node.input)
    return chain


def _reads(nodes: list, name: str) -> bool:
    return any(name in node.input for node in nodes)


def _subgraph(model: Any, nodes: list, inputs: list) -> Any:
    """A copy of `model` with these nodes and inputs, its initializers those they read, no
    outputs yet."""
    part = type(model)()
    part.CopyFrom(model)
    graph = part.graph
    read = {name for node in nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in read]
    made = {out for node in nodes for out in node.output} | {i.name for i in inputs}
    infos = [v for v in graph.value_info if v.name in made]
    del graph.node[:], graph.input[:], graph.output[:], graph.value_info[:]
    del graph.initializer[:]
    graph.node.extend(nodes)
    graph.input.extend(inputs)
    graph.initializer.extend(kept)
    graph.value_info.extend(infos)
    return part


def _features_info() -> Any:
    return onnx_proto.make_value_info(
        FEATURES, _FLOAT, ["batch", "feature_channels", "feature_height", "feature_width"]
    )
