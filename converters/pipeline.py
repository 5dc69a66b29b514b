"""The shared path after export: check, transform, prove parity, configure, publish."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from converters.errors import ConversionError, ParityError, first_line
from converters.optimize import optimize_graph, quantize_int8, to_fp16
from converters.parity import (
    Arrays,
    Runner,
    Tolerances,
    check_parity,
    failure_message,
    load_samples,
    make_samples,
    ort_runner,
)
from converters.progress import QUIET, Reporter
from converters.publish import plan_version, publish
from converters.signature import default_pad_inputs, graph_inputs, graph_outputs
from converters.tokenizer import TOKENIZER_FILE, TokenizerSpec
from converters.triton_config import ConfigOptions, build_config


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


@dataclass
class PublishOptions:
    """Where and how to publish; ``pad_inputs=None`` means token-named integer inputs."""

    repo: Path
    name: str
    version: int | None = None
    config: ConfigOptions = field(default_factory=ConfigOptions)
    pad_inputs: list[str] | None = None
    optimize: bool = False
    quantize: bool = False
    fp16: bool = False
    tolerances: Tolerances | None = None
    samples_path: Path | None = None
    n_samples: int = 8
    version_policy: str = "all"
    tokenizer: TokenizerSpec | None = None  # published beside the model: it then takes text


def check_graph(model: onnx.ModelProto, what: str = "exported graph") -> onnx.ModelProto:
    """onnx.checker plus strict-enough shape inference, so broken graphs never reach a server."""
    try:
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model, check_type=True)
    except Exception as exc:
        raise ConversionError(f"the {what} is not a valid ONNX model: {first_line(exc)}") from None


def convert(
    exported: Exported, options: PublishOptions, reporter: Reporter = QUIET
) -> dict[str, Any]:
    """Publish ``exported`` as the next (or given) version; nothing written on error."""
    if options.quantize and options.fp16:
        raise ConversionError("choose one of --quantize int8 and --fp16, not both")
    start = time.perf_counter()
    original = check_graph(exported.model)
    version, _ = plan_version(options.repo, options.name, options.version)
    inputs = graph_inputs(original)
    pad = default_pad_inputs(inputs) if options.pad_inputs is None else options.pad_inputs
    config_options = replace(options.config, pad_inputs=list(pad))
    build_config(options.name, inputs, graph_outputs(original), config_options)  # fail fast
    if options.tokenizer is not None:
        options.tokenizer.check([spec.name for spec in inputs])

    final = original
    precision = "fp32"
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

    with reporter.step("parity check (source vs ONNX Runtime)"):
        if options.samples_path is not None:
            samples = load_samples(options.samples_path, inputs)
        elif exported.samples is not None:
            samples = exported.samples
        else:
            samples = make_samples(inputs, n=options.n_samples)
        source = exported.source or ort_runner(original)
        tolerances = options.tolerances or Tolerances.for_precision(
            precision, bool(exported.embedding_outputs)
        )
        cosine = exported.embedding_outputs or [o.name for o in graph_outputs(final)]
        report = check_parity(
            source,
            ort_runner(final),
            samples,
            tolerances,
            cosine,
            batched=config_options.max_batch_size > 0,
        )
    report = {
        "model": options.name,
        "version": version,
        "framework": exported.framework,
        "exporter": exported.exporter,
        "precision": precision,
        "reference": "source model" if exported.source else "unmodified ONNX graph",
        "notes": exported.notes,
        **report,
    }
    if not report["passed"]:
        raise ParityError(failure_message(options.name, report), report)

    config = build_config(options.name, graph_inputs(final), graph_outputs(final), config_options)
    data = final.SerializeToString()
    files = {"model.onnx": data, "parity.json": json.dumps(report, indent=2).encode() + b"\n"}
    if options.tokenizer is not None:
        options.tokenizer.apply(config)
        files[TOKENIZER_FILE] = options.tokenizer.json_text.encode()
    with reporter.step(f"publishing {options.name} version {version}"):
        version, version_dir = publish(
            options.repo, options.name, version, config, files, options.version_policy
        )
    return {
        "model": options.name,
        "version": version,
        "framework": exported.framework,
        "exporter": exported.exporter,
        "precision": precision,
        "max_abs_err": report["max_abs_err"],
        "min_cosine": report["min_cosine"],
        "size_bytes": len(data),
        "export_s": round(exported.export_seconds + time.perf_counter() - start, 2),
        "path": str(version_dir),
        "notes": exported.notes,
        "status": "built",
    }
