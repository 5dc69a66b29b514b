"""Graph signatures: the names, dtypes and shapes that configs, samples and parity rely on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from converters.errors import ConversionError

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; ``-1`` marks a dynamic dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    elem_type: int


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        raise ConversionError(
            f"graph value '{value.name}' is not a tensor (sequences/maps unsupported)"
        )
    dims: list[int] = []
    for dim in tensor.shape.dim:
        dims.append(dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    return TensorSpec(value.name, dtype, tuple(dims), tensor.elem_type)


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Real inputs: graph inputs that are not initializers (old exporters list weights too)."""
    initializers = {init.name for init in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in initializers]


def graph_outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(v) for v in model.graph.output]


def default_pad_inputs(inputs: list[TensorSpec]) -> list[str]:
    """Integer inputs named like tokenizer outputs may be zero-padded to the longest in a batch."""
    return [s.name for s in inputs if s.name in TOKEN_INPUTS and s.dtype.kind in "iu"]


# Ops that pass index values through unchanged (exporters put them between an input and its Gather).
_INDEX_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}


def _table_rows(graph: onnx.GraphProto) -> dict[str, int]:
    """Rows of each constant table (initializers and Constant nodes) by tensor name."""
    rows = {init.name: init.dims[0] for init in graph.initializer if init.dims}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.dims:
                    rows[node.output[0]] = attr.t.dims[0]
    return rows


def index_limits(model: onnx.ModelProto) -> dict[str, int]:
    """Integer inputs that index constant tables (embeddings): input name -> smallest table's rows.

    Sample values must stay below this, or ONNX Runtime rejects them (e.g. a 1,000-token
    vocabulary fed ids from 1000 up).
    """
    graph = model.graph
    rows = _table_rows(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    limits: dict[str, int] = {}
    for spec in graph_inputs(model):
        if spec.dtype.kind not in "iu":
            continue
        found, frontier, seen = [], [spec.name], set()
        while frontier:
            name = frontier.pop()
            seen.add(name)
            for node in consumers.get(name, []):
                if node.op_type == "Gather" and node.input[1] == name and node.input[0] in rows:
                    found.append(rows[node.input[0]])
                elif node.op_type in _INDEX_PASS_THROUGH and node.input[0] == name:
                    frontier.extend(o for o in node.output if o not in seen)
        if found:
            limits[spec.name] = min(found)
    return limits


def rename_tensors(model: onnx.ModelProto, mapping: dict[str, str]) -> onnx.ModelProto:
    """Rename graph inputs/outputs everywhere (exporters pick names like '35')."""
    mapping = {old: new for old, new in mapping.items() if old != new}
    if not mapping:
        return model
    existing = {v.name for v in model.graph.value_info} | {
        n for node in model.graph.node for n in node.output
    }
    clashes = sorted(set(mapping.values()) & (existing - set(mapping)))
    if clashes:
        raise ConversionError(f"cannot rename to {clashes}: the graph already uses those names")

    def visit(graph: onnx.GraphProto) -> None:
        for seq in (graph.input, graph.output, graph.value_info):
            for value in seq:
                value.name = mapping.get(value.name, value.name)
        for init in graph.initializer:
            init.name = mapping.get(init.name, init.name)
        for node in graph.node:
            node.input[:] = [mapping.get(n, n) for n in node.input]
            node.output[:] = [mapping.get(n, n) for n in node.output]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        visit(sub)

    visit(model.graph)
    return model


def rename_by_position(
    model: onnx.ModelProto, input_names: list[str] | None, output_names: list[str] | None
) -> onnx.ModelProto:
    """Give the i-th graph input/output the i-th requested name."""
    mapping: dict[str, str] = {}
    for wanted, specs, kind in (
        (input_names, graph_inputs(model), "inputs"),
        (output_names, graph_outputs(model), "outputs"),
    ):
        if not wanted:
            continue
        if len(wanted) != len(specs):
            raise ConversionError(
                f"{len(wanted)} {kind[:-1]} name(s) given but the graph has {len(specs)} {kind}: "
                f"{[s.name for s in specs]}"
            )
        mapping.update({spec.name: name for spec, name in zip(specs, wanted, strict=True)})
    return rename_tensors(model, mapping)
