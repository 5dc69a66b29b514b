"""The one publish step of every export path: prove parity, then publish atomically.

ONNX models (:mod:`converters.pipeline`) and TensorRT engines (:mod:`converters.tensorrt`) both end
here, so the parity report, the refusal on failure and the result row are the same for both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from converters.errors import ParityError
from converters.options import PublishOptions
from converters.parity import Arrays, Runner, Tolerances, check_parity, failure_message
from converters.progress import Reporter
from converters.publish import publish


@dataclass
class Candidate:
    """A built model file and how to judge it: run it and the reference on the same samples."""

    model_file: str  # "model.onnx" or "model.plan"
    data: bytes
    run: Runner
    runtime: str  # what runs ``run``: "ONNX Runtime", "TensorRT"
    reference: Runner
    reference_name: str  # what runs ``reference``: "source model", "unmodified ONNX graph"...
    samples: Arrays
    tolerances: Tolerances
    cosine_outputs: list[str]
    framework: str
    exporter: str
    precision: str
    notes: list[str] = field(default_factory=list)
    export_seconds: float = 0.0  # export and transforms (parity and publishing not included)
    extra_files: dict[str, bytes] = field(default_factory=dict)  # published beside the model


def _parity_report(
    candidate: Candidate, options: PublishOptions, version: int, config: mc.ModelConfig
) -> dict[str, Any]:
    report = check_parity(
        candidate.reference,
        candidate.run,
        candidate.samples,
        candidate.tolerances,
        candidate.cosine_outputs,
        batched=config.max_batch_size > 0,
    )
    return {
        "model": options.name,
        "version": version,
        "framework": candidate.framework,
        "exporter": candidate.exporter,
        "precision": candidate.precision,
        "reference": candidate.reference_name,
        "notes": candidate.notes,
        "export_s": round(candidate.export_seconds, 2),
        **report,
    }


# What the result table shows of a parity report.
_ROW_KEYS = (
    "model",
    "framework",
    "exporter",
    "precision",
    "max_abs_err",
    "min_cosine",
    "export_s",
    "notes",
)


def prove_and_publish(
    candidate: Candidate,
    options: PublishOptions,
    version: int,
    config: mc.ModelConfig,
    reporter: Reporter,
) -> dict[str, Any]:
    """Parity first; only a passing candidate is published (with its parity.json)."""
    with reporter.step(f"parity check ({candidate.reference_name} vs {candidate.runtime})"):
        report = _parity_report(candidate, options, version, config)
    if not report["passed"]:
        raise ParityError(failure_message(options.name, report), report)
    files = {
        candidate.model_file: candidate.data,
        "parity.json": json.dumps(report, indent=2).encode() + b"\n",
        **candidate.extra_files,
    }
    with reporter.step(f"publishing {options.name} version {version}"):
        version, version_dir = publish(
            options.repo, options.name, version, config, files, options.version_policy
        )
    row = {key: report[key] for key in _ROW_KEYS}
    row.update(version=version, size_bytes=len(candidate.data), path=str(version_dir))
    return {**row, "status": "built"}
