"""torch -> ONNX with the dynamo exporter, graph clean-up, saving (external data > 2 GB), checks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgediff.bundle.schema import ModelConfig
from edgediff.errors import ExportError
from edgediff.export.components import IO, dynamic_shapes, example_inputs
from edgediff.graphs.files import EXTERNAL_DATA_THRESHOLD, data_file

if TYPE_CHECKING:
    import onnx_ir as ir
    import torch

# The wrapper holds the real module as `self.model`; its weights keep their own names.
_WRAPPER_PREFIX = "model."


def export_graph(
    wrapper: torch.nn.Module, component: str, geo: ModelConfig, opset: int
) -> ir.Model:
    """Trace `wrapper` with torch.export (dynamic batch/spatial axes); return cleaned ONNX IR.

    `component` is the graph kind (components.graph_kind): a component name or "unet_guided".
    """
    import torch

    spec = IO[component]
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            example_inputs(component, geo),
            None,
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_shapes=dynamic_shapes(component, geo),
            opset_version=opset,
            dynamo=True,
            optimize=False,  # see _optimize
        )
    model = program.model
    _optimize(model)
    _name_nodes_by_module(model)
    _strip_metadata(model)
    _rename_weights(model)
    _rename_dims(model, component)
    return model


def _optimize(model: ir.Model) -> None:
    """Constant folding and clean-up passes, in place.

    torch.onnx's own optimize() also runs onnxscript's pattern rewriter, which took 8 of the 38 s
    of a small U-Net's export (tiny-v) to remove ~60 no-op nodes (x / 1.0, chained Unsqueeze)
    that ONNX Runtime and TensorRT remove themselves when they load the graph.
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    import onnxscript.optimizer

    common.InlinePass()(model)
    onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True)
    ir.passes.Sequential(
        common.IdentityEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


def _all_values(graph: ir.Graph) -> list[ir.Value]:
    import onnx_ir as ir

    values = [*graph.inputs, *graph.outputs]
    for node in ir.traversal.RecursiveGraphIterator(graph):
        values.extend(v for v in node.outputs if v is not None)
    return values


_NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def _name_nodes_by_module(model: ir.Model) -> None:
    """Name each node after the module that made it (`mid_block.attentions.0.proj_in/Conv`).

    Quantisation reports per-layer sensitivity and `--keep` takes layer names; torch's own
    names (`node_linear_12`) would mean nothing to a user. Unique within the graph.
    """
    import ast

    import onnx_ir as ir

    taken: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        scopes = node.metadata_props.get(_NAME_SCOPES)
        if not scopes:
            continue
        # [..., 'model.mid_block.attentions.0.proj_in', 'conv2d_16']: the last is the fx node.
        modules = [s for s in ast.literal_eval(scopes)[:-1] if s.startswith(_WRAPPER_PREFIX)]
        module = modules[-1][len(_WRAPPER_PREFIX) :] if modules else "graph"
        base = f"{module}/{node.op_type}"
        count = taken.get(base, 0)
        taken[base] = count + 1
        node.name = base if count == 0 else f"{base}_{count}"


def _strip_metadata(model: ir.Model) -> None:
    """Drop per-node stack traces and module paths: megabytes of debug text in every file."""
    import onnx_ir as ir

    model.graph.metadata_props.clear()
    for value in [*_all_values(model.graph), *model.graph.initializers.values()]:
        value.metadata_props.clear()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.clear()


def _rename_weights(model: ir.Model) -> None:
    """`model.conv_in.weight` -> `conv_in.weight`, as in the checkpoint's state dict."""
    initializers = model.graph.initializers
    for name, value in list(initializers.items()):
        if name.startswith(_WRAPPER_PREFIX) and name[len(_WRAPPER_PREFIX) :] not in initializers:
            value.name = name[len(_WRAPPER_PREFIX) :]


def _rename_dims(model: ir.Model, component: str) -> None:
    """Give the dynamic I/O axes readable names (torch writes e.g. `8*latent_h`) everywhere."""
    import onnx_ir as ir

    graph = model.graph
    mapping: dict[str, str] = {}
    for value in [*graph.inputs, *graph.outputs]:
        for axis, name in IO[component].dims.get(value.name, {}).items():
            dim = value.shape[axis] if value.shape is not None else None
            if not isinstance(dim, ir.SymbolicDim) or dim.value is None:
                raise ExportError(
                    f"the exported {component} has a fixed size {dim} on axis {axis} of "
                    f"'{value.name}', where a dynamic axis was asked for",
                    "This architecture is not supported by the exporter",
                )
            if mapping.setdefault(dim.value, name) != name:
                raise ExportError(
                    f"the exported {component} ties '{mapping[dim.value]}' and '{name}' "
                    f"together (both are '{dim.value}')",
                    "This architecture is not supported by the exporter",
                )
    for value in _all_values(graph):
        shape = value.shape
        if shape is None:
            continue
        dims = [
            ir.SymbolicDim(mapping[d.value])
            if isinstance(d, ir.SymbolicDim) and d.value in mapping
            else d
            for d in shape.dims
        ]
        if dims != list(shape.dims):
            value.shape = ir.Shape(dims)


def weight_bytes(model: ir.Model) -> int:
    """Bytes of all initializers."""
    return sum(
        v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None
    )


def save_ir(model: ir.Model, path: Path) -> tuple[Path, ...]:
    """Save an IR model (weights to one external data file above 2 GB); return that file, if any."""
    import onnx_ir as ir

    if weight_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        ir.save(model, path, external_data=data_file(path).name)
        return (data_file(path),)
    ir.save(model, path)
    return ()
