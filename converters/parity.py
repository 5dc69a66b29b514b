"""Parity: run the source model and the exported graph on the same inputs and refuse big gaps."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.errors import ConversionError, first_line
from converters.signature import TensorSpec

Arrays = dict[str, np.ndarray]
Runner = Callable[[Arrays], Arrays]


@dataclass
class Tolerances:
    """Element-wise ``|a - b| <= atol + rtol * |b|``; cosine (row-wise) only where asked."""

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float | None = None
    max_label_mismatch: float = 0.0

    @classmethod
    def for_precision(cls, precision: str, embedding: bool) -> Tolerances:
        """Defaults: fp32 is near-exact; fp16/int8 embeddings judged by cosine."""
        if precision == "int8":
            return cls(
                atol=math.inf if embedding else 0.05,
                rtol=0.0,
                min_cosine=0.95,
                max_label_mismatch=0.05,
            )
        if precision == "fp16":
            return cls(
                atol=1e-2,
                rtol=1e-2,
                min_cosine=0.999 if embedding else None,
                max_label_mismatch=0.01,
            )
        return cls(min_cosine=0.9999 if embedding else None)


# Integer inputs whose valid range is unknown get values below this: safe for any embedding table
# we are likely to meet, while the graph's own tables (see signature.index_limits) say more.
FALLBACK_INDEX_LIMIT = 100


def _integers(
    rng: np.random.Generator, spec: TensorSpec, shape: list[int], lengths: np.ndarray, limit: int
) -> np.ndarray:
    """Token-like values: masks from lengths, ids from the upper half of the valid range."""
    if spec.name == "attention_mask" and len(shape) == 2:
        return (np.arange(shape[1])[None, :] < lengths[:, None]).astype(spec.dtype)
    if spec.name == "token_type_ids":
        return np.zeros(shape, spec.dtype)
    if spec.name == "input_ids":  # ordinary word pieces (1000-2000) when the vocabulary allows
        high = max(1, min(2000, limit))
        return rng.integers(high // 2, high, shape).astype(spec.dtype)
    return rng.integers(0, max(1, min(10, limit)), shape).astype(spec.dtype)


def make_samples(
    inputs: list[TensorSpec],
    n: int = 8,
    seed: int = 0,
    seq_len: int = 16,
    index_limits: dict[str, int] | None = None,
) -> Arrays:
    """Inputs generated from the signature; token-like integer inputs get realistic values.

    ``index_limits`` maps integer inputs to the number of rows of the tables they index (the
    vocabulary size for ``input_ids``): values stay below it.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(2, seq_len // 3), seq_len + 1, size=n)
    limits = index_limits or {}
    samples: Arrays = {}
    for spec in inputs:
        shape = [
            n if i == 0 and d == -1 else (seq_len if d == -1 else d)
            for i, d in enumerate(spec.shape)
        ]
        if spec.dtype.kind == "f":
            samples[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            samples[spec.name] = rng.integers(0, 2, shape).astype(bool)
        elif spec.dtype.kind in "iu":
            limit = limits.get(spec.name, FALLBACK_INDEX_LIMIT)
            samples[spec.name] = _integers(rng, spec, shape, lengths, limit)
        else:
            raise ConversionError(
                f"cannot generate samples for input '{spec.name}' of {spec.dtype}; pass --samples"
            )
    return samples


def load_samples(path: Path, inputs: list[TensorSpec]) -> Arrays:
    """``.npz`` with one array per input name, or ``.npy`` for a single-input model."""
    if not path.is_file():
        raise ConversionError(f"samples file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ConversionError(f"{path} is not a .npy/.npz file: {first_line(exc)}") from None
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            raise ConversionError(
                f"{path} holds one array but the model has {len(inputs)} inputs; use .npz"
            )
        arrays = {inputs[0].name: loaded}
    else:
        arrays = {key: loaded[key] for key in loaded.files}
    missing = [s.name for s in inputs if s.name not in arrays]
    if missing:
        raise ConversionError(f"{path} lacks arrays for inputs {missing} (has {sorted(arrays)})")
    return {
        s.name: np.ascontiguousarray(arrays[s.name]).astype(s.dtype, copy=False) for s in inputs
    }


def ort_runner(model: onnx.ModelProto) -> Runner:
    """An ONNX Runtime CPU session over the in-memory graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        message = first_line(exc)
        if "NOT_IMPLEMENTED" in message or "Could not find an implementation" in message:
            raise ConversionError(
                f"ONNX Runtime does not support an operator in the graph: {message}"
            ) from None
        raise ConversionError(f"ONNX Runtime cannot load the exported graph: {message}") from None
    names = [o.name for o in session.get_outputs()]

    def run(feed: Arrays) -> Arrays:
        return dict(zip(names, session.run(names, feed), strict=True))

    return run


def _take_first(arrays: Arrays) -> Arrays:
    return {k: v[:1] for k, v in arrays.items()}


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else value


def _compare_one(
    name: str, ref: np.ndarray, got: np.ndarray, tol: Tolerances, cosine: bool
) -> dict[str, Any]:
    if ref.shape != got.shape:
        return {"passed": False, "reason": f"shape {list(got.shape)} != source {list(ref.shape)}"}
    if ref.dtype.kind not in "fc":
        mismatch = float(np.mean(ref != got)) if ref.size else 0.0
        return {"mismatch_fraction": mismatch, "passed": mismatch <= tol.max_label_mismatch}
    a, b = got.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(a - b)
    result: dict[str, Any] = {
        "max_abs_err": _clean(float(np.max(diff))) if diff.size else 0.0,
        "max_rel_err": _clean(float(np.max(diff / np.maximum(np.abs(b), 1e-6))))
        if diff.size
        else 0.0,
    }
    ok = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(b)))
    if cosine and a.ndim >= 2 and a.size:
        a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
        norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
        cos = np.sum(a2 * b2, axis=1) / np.maximum(norms, 1e-12)
        result["min_cosine"] = _clean(float(np.min(cos)))
        result["mean_cosine"] = _clean(float(np.mean(cos)))
        if tol.min_cosine is not None:
            ok = ok and bool(np.min(cos) >= tol.min_cosine)
    result["passed"] = ok
    return result


def _merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    if old is None:
        return new
    merged = dict(old)
    merged["passed"] = old["passed"] and new["passed"]
    for key, value in new.items():
        if key in ("max_abs_err", "max_rel_err", "mismatch_fraction") and value is not None:
            merged[key] = max(value, old.get(key) or 0.0)
        elif key == "min_cosine" and value is not None:
            merged[key] = min(value, old.get(key, value))
        elif key == "reason":
            merged[key] = value
    return merged


def check_parity(
    source: Runner,
    candidate: Runner,
    samples: Arrays,
    tolerances: Tolerances,
    cosine_outputs: list[str],
    batched: bool,
) -> dict[str, Any]:
    """Compare on the whole sample batch and, when batched, on a batch of one too."""
    batches = [samples]
    if batched and len(next(iter(samples.values()))) > 1:
        batches.append(_take_first(samples))
    outputs: dict[str, dict[str, Any]] = {}
    for batch in batches:
        try:
            ref = source(batch)
        except Exception as exc:
            raise ConversionError(
                f"the source model failed on the parity samples: {first_line(exc)}"
            ) from None
        try:
            got = candidate(batch)
        except Exception as exc:
            raise ConversionError(
                f"the exported model failed on inputs of shapes "
                f"{ {k: list(v.shape) for k, v in batch.items()} }: {first_line(exc)}"
            ) from None
        for name, ref_value in ref.items():
            if name not in got:
                raise ConversionError(
                    f"the exported model has no output '{name}' (has {sorted(got)})"
                )
            one = _compare_one(
                name,
                np.asarray(ref_value),
                np.asarray(got[name]),
                tolerances,
                name in cosine_outputs,
            )
            outputs[name] = _merge(outputs.get(name), one)
    float_errs = [o["max_abs_err"] for o in outputs.values() if o.get("max_abs_err") is not None]
    cosines = [o["min_cosine"] for o in outputs.values() if o.get("min_cosine") is not None]
    tol = {
        k: (None if isinstance(v, float) and math.isinf(v) else v)
        for k, v in asdict(tolerances).items()
    }
    return {
        "passed": all(o["passed"] for o in outputs.values()),
        "samples": int(len(next(iter(samples.values())))),
        "max_abs_err": max(float_errs) if float_errs else None,
        "min_cosine": min(cosines) if cosines else None,
        "tolerances": tol,
        "outputs": outputs,
    }


def failure_message(name: str, report: dict[str, Any]) -> str:
    bad = {k: v for k, v in report["outputs"].items() if not v["passed"]}
    parts = []
    for out, stats in bad.items():
        detail = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in stats.items()
            if k != "passed"
        )
        parts.append(f"'{out}' ({detail})")
    return (
        f"parity check failed for '{name}': {'; '.join(parts)} "
        f"vs tolerances {report['tolerances']}; nothing was published"
    )
