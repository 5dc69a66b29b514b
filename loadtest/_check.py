"""Is an answer right? Names, datatypes and shapes always; values against local ONNX Runtime.

A wrong answer must count as a Locust failure, never as a fast success.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest._inputs import numpy_dtype
from loadtest._model import ModelSpec
from service.datatypes import ORT_TO_V2, V2_TO_NUMPY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputTensor:
    """One decoded output, whatever the wire format."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


def expected_rows(inputs: dict[str, np.ndarray], spec: ModelSpec) -> int | None:
    if not spec.batched or not inputs:
        return None
    return int(next(iter(inputs.values())).shape[0])


def check_structure(
    spec: ModelSpec, inputs: dict[str, np.ndarray], outputs: dict[str, OutputTensor]
) -> str | None:
    """The first way ``outputs`` contradicts the model's metadata, or None."""
    missing = sorted(set(spec.output_names) - set(outputs))
    extra = sorted(set(outputs) - set(spec.output_names))
    if missing or extra:
        return f"output names: missing {missing}, unexpected {extra}"
    rows = expected_rows(inputs, spec)
    for declared in spec.outputs:
        got = outputs[declared.name]
        if got.datatype != declared.datatype:
            return f"{declared.name}: datatype {got.datatype}, expected {declared.datatype}"
        want = list(declared.shape)
        if rows is not None and want:
            want[0] = rows
        if len(got.shape) != len(want) or any(
            w >= 0 and g != w for g, w in zip(got.shape, want, strict=True)
        ):
            return f"{declared.name}: shape {list(got.shape)}, expected {want}"
        if tuple(got.array.shape) != tuple(got.shape):
            return f"{declared.name}: {got.array.size} values for shape {list(got.shape)}"
        if got.datatype != "BYTES" and got.array.dtype != numpy_dtype(got.datatype):
            return f"{declared.name}: decoded as {got.array.dtype}, expected {got.datatype}"
    return None


class Reference:
    """The model file from a local repository, run with ONNX Runtime on the same inputs."""

    def __init__(self, path: Path, tolerance: float) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tolerance = tolerance
        self.path = path

    def compare(
        self, inputs: dict[str, np.ndarray], outputs: dict[str, OutputTensor]
    ) -> str | None:
        feeds: dict[str, Any] = {}
        for node in self.session.get_inputs():
            if node.name not in inputs:
                return None  # the server fills it (optional input): nothing to compare
            feeds[node.name] = inputs[node.name].astype(V2_TO_NUMPY[ORT_TO_V2[node.type]])
        names = [node.name for node in self.session.get_outputs() if node.name in outputs]
        for name, want in zip(names, self.session.run(names, feeds), strict=True):
            got = outputs[name].array
            if got.shape != want.shape:
                return (
                    f"{name}: shape {list(got.shape)}, local ONNX Runtime gives {list(want.shape)}"
                )
            if np.issubdtype(want.dtype, np.floating):
                close = np.allclose(got, want, atol=self.tolerance, rtol=self.tolerance)
                if not close:
                    error = float(np.max(np.abs(got.astype(np.float64) - want)))
                    return f"{name}: differs from local ONNX Runtime (max abs error {error:.3g})"
            elif not np.array_equal(got, want):
                return f"{name}: differs from local ONNX Runtime"
        return None


_references: dict[tuple[str, str], Reference | None] = {}


def reference_for(repo: str, spec: ModelSpec, tolerance: float) -> Reference | None:
    """The ONNX model of ``spec`` in ``repo`` (served version, else the highest), or None."""
    key = (repo, spec.name)
    if key not in _references:
        model_dir = Path(repo) / spec.name
        versions = sorted(
            (int(p.name) for p in model_dir.glob("*") if p.name.isdigit() and p.is_dir()),
            reverse=True,
        )
        if spec.version.isdigit():
            versions.insert(0, int(spec.version))
        path = next(
            (
                model_dir / str(v) / "model.onnx"
                for v in versions
                if (model_dir / str(v) / "model.onnx").is_file()
            ),
            None,
        )
        if path is None:
            log.warning("no model.onnx for %s under %s: values are not checked", spec.name, repo)
        _references[key] = Reference(path, tolerance) if path is not None else None
    return _references[key]
