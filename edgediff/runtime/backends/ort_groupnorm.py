"""GroupNorm statistics as graph inputs and outputs, so VAE tiles can share the whole image's.

The bundle's VAEs export each GroupNorm as Reshape(x, [0, G, -1]) -> InstanceNormalization ->
Reshape -> Mul -> Add. Run on a tile, it normalises with the tile's own mean and variance,
which shifts the colours of the whole tile (runtime.vae_tiling measures it). This rewrite, on
the graph alone (onnx_proto; external weights are never read), gives InstanceNormalization i

- inputs `norm_mean_i` and `norm_var_i` (N×G) it normalises with when `norm_given` (one float)
  is 1, instead of its input's own statistics;
- an output `norm_stats_i` (N×G×2): the mean and variance of its input per sample and group,
  each pixel weighted by `norm_weight` (N or 1 × 1 × h × w, resized nearest to each layer's
  resolution), so a driver can add up tiles' statistics without counting overlaps twice.

A GroupNorm may also normalise a flattened N×C×(H·W) tensor, as the mid-block attention of
Stable Diffusion's VAE does. Its layer's H and W are then the graph input's scaled by
sqrt(H·W / (H_in·W_in)): the VAEs scale both axes by the same power of two.

Every added input also has a default (an initializer of its name: own statistics, weight 1),
so a caller that feeds only the model's own input runs the original InstanceNormalization and
gets the original outputs bit for bit, first and under their names; the statistics follow.
On the shipped decoder a run costs about 20 % more than the original's (vae_tiling measures).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgediff.runtime.backends import onnx_proto

NORM_GIVEN = "norm_given"
NORM_WEIGHT = "norm_weight"
_STATS_PREFIX = "norm_stats_"
_FLOAT, _INT64, _BOOL = 1, 7, 9  # TensorProto.DataType
_MIN_OPSET = 13  # Unsqueeze and ReduceSum take their axes as inputs from 13 on


def mean_input(i: int) -> str:
    """Name of the input with the mean InstanceNormalization i normalises with."""
    return f"norm_mean_{i}"


def var_input(i: int) -> str:
    """Name of the input with the variance InstanceNormalization i normalises with."""
    return f"norm_var_{i}"


def stats_output(i: int) -> str:
    """Name of the output with InstanceNormalization i's input statistics (N×G×2)."""
    return f"{_STATS_PREFIX}{i}"


def norm_count(output_names: Any) -> int:
    """How many normalisations a rewritten graph reports statistics of, from its outputs."""
    return sum(1 for name in output_names if name.startswith(_STATS_PREFIX))


def add_norm_statistics(model: Any) -> int:
    """Rewrite each InstanceNormalization of a ModelProto (onnx_proto) in place as the module
    docstring says; return how many were rewritten. Raises ValueError for graphs it cannot
    rewrite (nothing is changed then)."""
    graph = model.graph
    norms = [n for n in graph.node if n.op_type == "InstanceNormalization"]
    if not norms:
        return 0
    _check_supported(model, norms)
    producers = {out: node for node in graph.node for out in node.output}
    ranks = _ranks(graph, producers, norms)
    shared = _Shared(image=graph.input[0].name)
    nodes: list[Any] = []
    for node in graph.node:
        if node.op_type != "InstanceNormalization":
            nodes.append(node)
            continue
        i = len(shared.rewritten)
        source = producers[node.input[0]].input[0]  # the tensor the Reshape groups
        nodes.extend(_rewrite(node, source, ranks[source] == 3, i, shared))
        shared.rewritten.append(i)
    del graph.node[:]
    graph.node.extend(shared.nodes() + nodes)
    graph.initializer.extend(shared.initializers())
    graph.input.extend(shared.inputs())
    graph.output.extend(
        onnx_proto.make_value_info(stats_output(i), _FLOAT, ["batch", f"groups_{i}", 2])
        for i in shared.rewritten
    )
    return len(shared.rewritten)


def _check_supported(model: Any, norms: list) -> None:
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < _MIN_OPSET:
        raise ValueError(f"opset {opset} is older than {_MIN_OPSET}")
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {t.name for t in graph.initializer} | {i.name for i in graph.input}
    clash = sorted(name for name in taken if name.startswith(("norm_", "norm/")))
    if clash:  # the names added here would collide
        raise ValueError(f"the graph already has values named like the rewrite's: {clash[:3]}")
    if any(i.type.tensor_type.elem_type not in (0, _FLOAT) for i in graph.input):
        # The added statistics are float32; a float16 graph would need casts around them.
        raise ValueError("only float32 graphs are rewritten")
    producers = {out: node for node in graph.node for out in node.output}
    for norm in norms:
        grouped = producers.get(norm.input[0])
        if grouped is None or grouped.op_type != "Reshape" or len(norm.input) != 3:
            raise ValueError(f"{norm.name or norm.output[0]} is not an exported GroupNorm")
    ranks = _ranks(graph, producers, norms)
    odd = sorted(name for name, rank in ranks.items() if rank not in (3, 4))
    if odd:
        raise ValueError(f"GroupNorm inputs must be N×C×H×W or N×C×(H·W); not {odd[:3]}")
    if 3 in ranks.values() and _rank_of(graph.input[0].name, graph, producers) != 4:
        raise ValueError("a flattened GroupNorm needs the graph's first input to be N×C×H×W")


def _ranks(graph: Any, producers: dict, norms: list) -> dict[str, int]:
    """Each grouped tensor's rank (the tensor a GroupNorm's Reshape groups)."""
    sources = (producers[norm.input[0]].input[0] for norm in norms)
    return {source: _rank_of(source, graph, producers) for source in sources}


def _rank_of(name: str, graph: Any, producers: dict) -> int:
    """A tensor's rank from the graph's declared shapes, else from the Transpose that made it;
    4 when neither says (convolutions' outputs, which exporters leave undeclared)."""
    for info in (*graph.input, *graph.value_info):
        if info.name == name and len(info.type.tensor_type.shape.dim):
            return len(info.type.tensor_type.shape.dim)
    made_by = producers.get(name)
    if made_by is not None and made_by.op_type == "Transpose":
        perm = onnx_proto.attribute(made_by, "perm")
        if perm:
            return len(perm)
    return 4


class _Shared:
    """The inputs, constants and nodes every rewritten normalisation reads, made once."""

    def __init__(self, image: str) -> None:
        self.image = image  # the graph's first input, whose H×W a flattened norm scales
        self.rewritten: list[int] = []
        self._constants: dict[str, np.ndarray] = {}

    def constant(self, value: Any, dtype: Any = np.int64) -> str:
        array = np.asarray(value, dtype=dtype)
        key = f"norm/const_{array.dtype}_{'_'.join(map(str, array.ravel()))}_{array.ndim}d"
        self._constants[key] = array
        return key

    def initializers(self) -> list:
        defaults = {NORM_GIVEN: np.zeros(1, np.float32), NORM_WEIGHT: np.ones((1, 1, 1, 1))}
        for i in self.rewritten:
            # (1, 1) broadcasts to N×G; the mean is also the shift the statistics are taken
            # about, so zero reproduces the plain sums.
            defaults[mean_input(i)] = np.zeros((1, 1), np.float32)
            defaults[var_input(i)] = np.ones((1, 1), np.float32)
        tensors = {**self._constants, **defaults}
        return [
            onnx_proto.make_tensor(name, v if name in self._constants else v.astype(np.float32))
            for name, v in tensors.items()
        ]

    def inputs(self) -> list:
        infos = [
            # One element, not a scalar: OrtSession passes feeds through np.ascontiguousarray,
            # which makes scalars 1-D.
            onnx_proto.make_value_info(NORM_GIVEN, _FLOAT, [1]),
            onnx_proto.make_value_info(NORM_WEIGHT, _FLOAT, ["weight_batch", 1, "h", "w"]),
        ]
        for i in self.rewritten:
            for name in (mean_input(i), var_input(i)):
                infos.append(onnx_proto.make_value_info(name, _FLOAT, ["batch", f"groups_{i}"]))
        return infos

    def nodes(self) -> list:
        return [_node("Cast", [NORM_GIVEN], ["norm/given"], "norm/given", to=_BOOL)]


def _node(op: str, inputs: list[str], outputs: list[str], name: str, **ints: int) -> Any:
    node = onnx_proto.make_node(op, inputs, outputs, name, "")
    for key, value in ints.items():
        onnx_proto.set_int(node, key, value)
    return node


def _rewrite(norm: Any, source: str, flat: bool, i: int, shared: _Shared) -> list:
    """InstanceNormalization i as own-or-given normalisation plus its input's statistics."""
    p = f"norm_{i}/"
    axes = shared.constant
    size = _flat_size(source, shared.image, p, axes) if flat else _size(source, p, axes)
    return [
        _select(norm, i, shared),
        *size,
        *_statistics(norm.input[0], source, mean_input(i), p, axes),
        # (N, G, 2): the mean and variance side by side.
        _node("Unsqueeze", [p + "mean_out", axes([2])], [p + "mean_col"], p + "mean_col"),
        _node("Unsqueeze", [p + "var_out", axes([2])], [p + "var_col"], p + "var_col"),
        _node("Concat", [p + "mean_col", p + "var_col"], [stats_output(i)], p + "stats", axis=2),
    ]


def _select(norm: Any, i: int, shared: _Shared) -> Any:
    """If norm_given: x·a + c with the given statistics, else the InstanceNormalization."""
    x, scale, bias = norm.input
    p = f"norm_{i}/"
    axes = shared.constant
    eps = float(onnx_proto.attribute(norm, "epsilon", 1e-5))
    own = onnx_proto.make_node(norm.op_type, [x, scale, bias], [p + "own"], norm.name, norm.domain)
    own.attribute.extend(norm.attribute)
    # a = scale / sqrt(var + eps), c = bias - mean·a, on N×G numbers; then one multiply-add
    # over the tensor.
    given = [
        _node("Unsqueeze", [mean_input(i), axes([2])], [p + "mean3"], p + "mean3"),
        _node("Unsqueeze", [var_input(i), axes([2])], [p + "var3"], p + "var3"),
        _node("Add", [p + "var3", axes(eps, np.float32)], [p + "var_eps"], p + "var_eps"),
        _node("Sqrt", [p + "var_eps"], [p + "std"], p + "std"),
        _node("Unsqueeze", [scale, axes([1])], [p + "scale2"], p + "scale2"),
        _node("Unsqueeze", [bias, axes([1])], [p + "bias2"], p + "bias2"),
        _node("Div", [p + "scale2", p + "std"], [p + "a"], p + "a"),
        _node("Mul", [p + "mean3", p + "a"], [p + "mean_a"], p + "mean_a"),
        _node("Sub", [p + "bias2", p + "mean_a"], [p + "c"], p + "c"),
        _node("Mul", [x, p + "a"], [p + "xa"], p + "xa"),
        _node("Add", [p + "xa", p + "c"], [p + "given"], p + "given"),
    ]
    # If, not Where: only the branch taken runs (Where ran both and cost 14 % of a decode).
    select = _node("If", ["norm/given"], [norm.output[0]], p + "select")
    onnx_proto.set_graph(
        select, "then_branch", given, [onnx_proto.make_value_info(p + "given", _FLOAT, None)]
    )
    onnx_proto.set_graph(
        select, "else_branch", [own], [onnx_proto.make_value_info(p + "own", _FLOAT, None)]
    )
    return select


def _size(source: str, p: str, axes: Any) -> list:
    """Nodes giving p+"hw": an N×C×H×W source's [H, W]."""
    return [
        _node("Shape", [source], [p + "shape4"], p + "shape4"),
        _node("Slice", [p + "shape4", axes([2]), axes([4])], [p + "hw"], p + "hw"),
    ]


def _flat_size(source: str, image: str, p: str, axes: Any) -> list:
    """Nodes giving p+"hw": the [H, W] an N×C×(H·W) source was flattened from, the graph
    input's H×W times sqrt(H·W / (H_in·W_in)), rounded."""
    return [
        _node("Shape", [source], [p + "flat_shape"], p + "flat_shape"),
        _node("Slice", [p + "flat_shape", axes([2]), axes([3])], [p + "count"], p + "count"),
        _node("Shape", [image], [p + "in_shape"], p + "in_shape"),
        _node("Slice", [p + "in_shape", axes([2]), axes([4])], [p + "in_hw"], p + "in_hw"),
        _node("Slice", [p + "in_shape", axes([2]), axes([3])], [p + "in_h"], p + "in_h"),
        _node("Slice", [p + "in_shape", axes([3]), axes([4])], [p + "in_w"], p + "in_w"),
        _node("Mul", [p + "in_h", p + "in_w"], [p + "in_count"], p + "in_count"),
        _node("Cast", [p + "count"], [p + "count_f"], p + "count_f", to=_FLOAT),
        _node("Cast", [p + "in_count"], [p + "in_count_f"], p + "in_count_f", to=_FLOAT),
        _node("Div", [p + "count_f", p + "in_count_f"], [p + "area"], p + "area"),
        _node("Sqrt", [p + "area"], [p + "scale"], p + "scale"),
        _node("Cast", [p + "in_hw"], [p + "in_hw_f"], p + "in_hw_f", to=_FLOAT),
        _node("Mul", [p + "in_hw_f", p + "scale"], [p + "hw_f"], p + "hw_f"),
        _node("Round", [p + "hw_f"], [p + "hw_r"], p + "hw_r"),
        _node("Cast", [p + "hw_r"], [p + "hw"], p + "hw", to=_INT64),
    ]


def _statistics(x: str, source: str, mean: str, p: str, axes: Any) -> list:
    """Nodes giving p+"mean_out" and p+"var_out" (N×G): x's statistics per sample and group,
    each pixel weighted by norm_weight, taken about the given mean (the shift keeps float32
    sums of squares from cancelling once the mean is close). p+"hw" is the layer's [H, W]."""
    return [
        # The weights at this layer's H×W, as an (n, H·W, 1) column.
        _node("Shape", [source], [p + "shape_n"], p + "shape_n"),
        _node("Slice", [p + "shape_n", axes([0]), axes([2])], [p + "nc"], p + "nc"),
        _node("Shape", [NORM_WEIGHT], [p + "wshape"], p + "wshape"),
        _node("Slice", [p + "wshape", axes([0]), axes([2])], [p + "wn1"], p + "wn1"),
        _node("Concat", [p + "wn1", p + "hw"], [p + "wsize"], p + "wsize", axis=0),
        _resize_nearest(NORM_WEIGHT, p + "wsize", p + "w4", p + "w4"),
        _node("Slice", [p + "wshape", axes([0]), axes([1])], [p + "wn"], p + "wn"),
        _node("Concat", [p + "wn", axes([-1, 1])], [p + "wcol_shape"], p + "wcol_shape", axis=0),
        _node("Reshape", [p + "w4", p + "wcol_shape"], [p + "wcol"], p + "wcol"),
        # x - mean as (N, G, C/G, H, W), then as (N, C, H·W) for the matrix products.
        _node("Shape", [x], [p + "shape3"], p + "shape3"),
        _node("Slice", [p + "shape3", axes([0]), axes([2])], [p + "ng"], p + "ng"),
        _node("Concat", [p + "ng", axes([-1]), p + "hw"], [p + "shape5"], p + "shape5", axis=0),
        _node("Reshape", [source, p + "shape5"], [p + "x5"], p + "x5"),
        _node("Unsqueeze", [mean, axes([2, 3, 4])], [p + "ref"], p + "ref"),
        _node("Sub", [p + "x5", p + "ref"], [p + "d5"], p + "d5"),
        _node("Concat", [p + "nc", axes([-1])], [p + "shape_nc"], p + "shape_nc", axis=0),
        _node("Reshape", [p + "d5", p + "shape_nc"], [p + "d"], p + "d"),
        _node("Mul", [p + "d", p + "d"], [p + "dd"], p + "dd"),
        # Weighted sums over H·W as matrix-vector products: no weighted copy of the tensor.
        _node("MatMul", [p + "d", p + "wcol"], [p + "s1c"], p + "s1c"),
        _node("MatMul", [p + "dd", p + "wcol"], [p + "s2c"], p + "s2c"),
        _node("Concat", [p + "ng", axes([-1])], [p + "shape_ng"], p + "shape_ng", axis=0),
        _node("Reshape", [p + "s1c", p + "shape_ng"], [p + "s1g"], p + "s1g"),
        _node("Reshape", [p + "s2c", p + "shape_ng"], [p + "s2g"], p + "s2g"),
        _node("ReduceSum", [p + "s1g", axes([2])], [p + "s1"], p + "s1", keepdims=0),
        _node("ReduceSum", [p + "s2g", axes([2])], [p + "s2"], p + "s2", keepdims=0),
        # Weight mass: the weights' sum at this resolution times the channels per group.
        _node("ReduceSum", [p + "wcol", axes([1, 2])], [p + "wsum"], p + "wsum", keepdims=0),
        _node("Shape", [p + "x5"], [p + "shape5r"], p + "shape5r"),
        _node("Slice", [p + "shape5r", axes([2]), axes([3])], [p + "cg"], p + "cg"),
        _node("Cast", [p + "cg"], [p + "cgf"], p + "cgf", to=_FLOAT),
        _node("Mul", [p + "wsum", p + "cgf"], [p + "mass1"], p + "mass1"),
        _node("Unsqueeze", [p + "mass1", axes([1])], [p + "mass0"], p + "mass0"),  # (n, 1)
        # An all-zero weight gives zero sums over a tiny mass, not 0/0.
        _node("Max", [p + "mass0", axes(1e-30, np.float32)], [p + "mass"], p + "mass"),
        _node("Div", [p + "s1", p + "mass"], [p + "dm"], p + "dm"),
        _node("Div", [p + "s2", p + "mass"], [p + "m2"], p + "m2"),
        _node("Mul", [p + "dm", p + "dm"], [p + "dm2"], p + "dm2"),
        _node("Sub", [p + "m2", p + "dm2"], [p + "var0"], p + "var0"),
        _node("Max", [p + "var0", axes(0.0, np.float32)], [p + "var_out"], p + "var_out"),
        _node("Add", [mean, p + "dm"], [p + "mean_out"], p + "mean_out"),
    ]


def _resize_nearest(data: str, sizes: str, output: str, name: str) -> Any:
    """Resize to `sizes`, nearest: at integer scale factors pixel j takes the weight of pixel
    j // factor."""
    resize = _node("Resize", [data, "", "", sizes], [output], name)
    onnx_proto.set_string(resize, "mode", "nearest")
    onnx_proto.set_string(resize, "coordinate_transformation_mode", "asymmetric")
    onnx_proto.set_string(resize, "nearest_mode", "floor")
    return resize
