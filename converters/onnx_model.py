"""Existing ``.onnx`` files: load, check, and make a fixed batch axis dynamic when possible."""

from __future__ import annotations

import time
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from converters.errors import ConversionError, first_line
from converters.parity import make_samples, ort_runner
from converters.pipeline import Exported, check_graph
from converters.signature import graph_inputs, rename_by_position


def load_onnx(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ConversionError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ConversionError(f"{path} is not an ONNX model: {first_line(exc)}") from None
    except Exception as exc:
        raise ConversionError(f"{path} is not an ONNX model: {first_line(exc)}") from None
    if not model.graph.node and not model.graph.output:
        raise ConversionError(f"{path} is not an ONNX model: it has no graph")
    return check_graph(model, what=f"file {path}")


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn fixed first dims into 'batch' if the graph really runs with another batch size."""
    fixed = [s.name for s in graph_inputs(model) if s.shape and s.shape[0] != -1]
    if not fixed:
        return model
    patched = onnx.ModelProto()
    patched.CopyFrom(model)
    initializers = {i.name for i in patched.graph.initializer}
    for value in [*patched.graph.input, *patched.graph.output]:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del patched.graph.value_info[:]
    try:
        patched = onnx.shape_inference.infer_shapes(patched)
        specs = graph_inputs(patched)
        for n in (1, 3):
            ort_runner(patched)(make_samples(specs, n=n))
    except Exception as exc:
        message = str(exc) if isinstance(exc, ConversionError) else first_line(exc)
        raise ConversionError(
            f"inputs {fixed} have a fixed batch dimension and the graph cannot be made dynamic "
            f"({message}); re-export with a dynamic batch axis or pass --max-batch-size 0"
        ) from None
    return patched


def import_onnx(
    path: Path,
    *,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    batched: bool = True,
) -> Exported:
    start = time.perf_counter()
    model = load_onnx(path)
    notes = []
    if batched and any(s.shape and s.shape[0] != -1 for s in graph_inputs(model)):
        model = make_batch_dynamic(model)
        notes.append("fixed batch dimension replaced by a dynamic one")
    model = rename_by_position(model, input_names, output_names)
    return Exported(
        model=model,
        framework="onnx",
        source=None,
        exporter="onnx import",
        notes=notes,
        export_seconds=time.perf_counter() - start,
    )
