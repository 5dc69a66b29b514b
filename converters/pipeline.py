"""The shared path after export: check, transform, then prove parity and publish."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import onnx

from converters.errors import ConversionError, first_line
from converters.optimize import optimize_graph, quantize_int8, to_fp16
from converters.options import PublishOptions
from converters.parity import Arrays, Runner, Tolerances, load_samples, make_samples, ort_runner
from converters.progress import QUIET, Reporter
from converters.publish import check_target
from converters.release import Candidate, prove_and_publish
from converters.signature import default_pad_inputs, graph_inputs, graph_outputs, index_limits
from converters.tokenizer import TOKENIZER_FILE
from converters.triton_config import build_config

__all__ = ["Exported", "PublishOptions", "check_graph", "convert"]


@dataclass
class Exported:
    """What a framework converter hands over: the graph and a way to run the original."""

    model: onnx.ModelProto
    framework: str
    source: Runner | None = None  # None: compare against the unmodified graph itself
    exporter: str = ""
    notes: list[str] = field(default_factory=list)
    samples: Arrays | None = None
    embedding_outputs: list[str] = field(default_factory=list)
    export_seconds: float = 0.0


def check_graph(model: onnx.ModelProto, what: str = "exported graph") -> onnx.ModelProto:
    """onnx.checker plus strict-enough shape inference, so broken graphs never reach a server."""
    try:
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model, check_type=True)
    except Exception as exc:
        raise ConversionError(f"the {what} is not a valid ONNX model: {first_line(exc)}") from None


def _transform(
    original: onnx.ModelProto, options: PublishOptions, reporter: Reporter
) -> tuple[onnx.ModelProto, str]:
    """The graph to publish and its precision, after the requested optimisation/quantisation."""
    final, precision = original, "fp32"
    if options.optimize:
        with reporter.step("ONNX Runtime graph optimisation"):
            final = optimize_graph(final)
    if options.quantize:
        with reporter.step("int8 dynamic quantisation (per channel)"):
            final = quantize_int8(final)
        precision = "int8"
    if options.fp16:
        with reporter.step("fp16 conversion"):
            final = to_fp16(final)
        precision = "fp16"
    if final is not original:
        final = check_graph(final, what=f"{precision} transformed graph")
    return final, precision


def _samples(exported: Exported, options: PublishOptions, graph: onnx.ModelProto) -> Arrays:
    inputs = graph_inputs(graph)
    if options.samples_path is not None:
        return load_samples(options.samples_path, inputs)
    if exported.samples is not None:
        return exported.samples
    return make_samples(inputs, n=options.n_samples, index_limits=index_limits(graph))


def convert(
    exported: Exported, options: PublishOptions, reporter: Reporter = QUIET
) -> dict[str, Any]:
    """Publish ``exported`` as the next (or given) version; nothing written on error."""
    if options.quantize and options.fp16:
        raise ConversionError("choose one of --quantize int8 and --fp16, not both")
    start = time.perf_counter()
    original = check_graph(exported.model)
    inputs = graph_inputs(original)
    pad = default_pad_inputs(inputs) if options.pad_inputs is None else options.pad_inputs
    config_options = replace(options.config, pad_inputs=list(pad))
    config = build_config(options.name, inputs, graph_outputs(original), config_options)
    if options.tokenizer is not None:
        options.tokenizer.check([spec.name for spec in inputs])
    version, warnings = check_target(options.repo, options.name, options.version, config)
    for warning in warnings:
        reporter.note(warning)
    final, precision = _transform(original, options, reporter)
    embedding = bool(exported.embedding_outputs)
    candidate = Candidate(
        model_file="model.onnx",
        data=final.SerializeToString(),
        run=ort_runner(final),
        runtime="ONNX Runtime",
        reference=exported.source or ort_runner(original),
        reference_name="source model" if exported.source else "unmodified ONNX graph",
        samples=_samples(exported, options, original),
        tolerances=options.tolerances or Tolerances.for_precision(precision, embedding),
        cosine_outputs=exported.embedding_outputs or [o.name for o in graph_outputs(final)],
        framework=exported.framework,
        exporter=exported.exporter,
        precision=precision,
        notes=[*exported.notes, *warnings],
        export_seconds=exported.export_seconds + time.perf_counter() - start,
    )
    config = build_config(options.name, graph_inputs(final), graph_outputs(final), config_options)
    if options.tokenizer is not None:
        options.tokenizer.apply(config)
        candidate.extra_files[TOKENIZER_FILE] = options.tokenizer.json_text.encode()
    return prove_and_publish(candidate, options, version, config, reporter)
