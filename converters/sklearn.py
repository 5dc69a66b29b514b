"""scikit-learn → ONNX via skl2onnx; classifier probabilities as a plain tensor (no ZipMap)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.errors import ConversionError, first_line
from converters.parity import Arrays, Runner
from converters.pipeline import Exported
from converters.progress import QUIET, Reporter
from converters.signature import graph_outputs, rename_tensors


def load_estimator(path: Path) -> Any:
    """A pickled or joblib-dumped estimator/pipeline (pickle runs code: trusted files only)."""
    if not path.is_file():
        raise ConversionError(f"model file not found: {path}")
    import joblib

    try:
        model = joblib.load(path)
    except Exception:
        try:
            with open(path, "rb") as handle:
                model = pickle.load(handle)
        except Exception as exc:
            raise ConversionError(
                f"{path} is not a pickled/joblib scikit-learn model: {first_line(exc)}"
            ) from None
    if not hasattr(model, "fit") or not (hasattr(model, "predict") or hasattr(model, "transform")):
        raise ConversionError(
            f"{path} holds a {type(model).__name__}, not a scikit-learn estimator"
        )
    return model


def _is_classifier(model: Any) -> bool:
    from sklearn.base import is_classifier

    return bool(is_classifier(model)) and hasattr(model, "predict_proba")


def _source_runner(model: Any, input_name: str, classifier: bool, keep_label: bool) -> Runner:
    """The estimator itself on the parity samples, with the exported graph's output names."""

    def run(feed: Arrays) -> Arrays:
        x = feed[input_name]
        if classifier:
            result = {"probabilities": model.predict_proba(x).astype(np.float32)}
            if keep_label:
                result["label"] = np.asarray(model.predict(x)).astype(np.int64)
            return result
        pred = model.predict(x) if hasattr(model, "predict") else model.transform(x)
        pred = np.asarray(pred, dtype=np.float32)
        return {"predictions": pred.reshape(len(x), -1) if pred.ndim == 1 else pred}

    return run


def _skl2onnx(model: Any, input_name: str, n_features: int, classifier: bool) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(model): {"zipmap": False}} if classifier else None
    try:
        return convert_sklearn(
            model,
            initial_types=[(input_name, FloatTensorType([None, n_features]))],
            options=options,
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    except Exception as exc:
        message = first_line(exc)
        if "shape calculator" in message or "converter" in message.lower():
            raise ConversionError(f"skl2onnx does not support this estimator: {message}") from None
        raise ConversionError(f"skl2onnx conversion failed: {message}") from None


def export_sklearn(
    model: Any,
    *,
    input_name: str = "input",
    n_features: int | None = None,
    keep_label: bool = False,
    samples: Arrays | None = None,
    reporter: Reporter = QUIET,
) -> Exported:
    """Float32 input [-1, n_features] -> ``probabilities`` (+ ``label``) or ``predictions``."""
    n = n_features or getattr(model, "n_features_in_", None)
    if not n:
        raise ConversionError("cannot tell the number of input features; pass --n-features")
    classifier = _is_classifier(model)
    start = time.perf_counter()
    with reporter.step("skl2onnx conversion"):
        onx = _skl2onnx(model, input_name, int(n), classifier)
    outputs = [o.name for o in graph_outputs(onx)]
    if classifier:
        label, proba = outputs[0], outputs[1]
        onx = rename_tensors(onx, {proba: "probabilities", label: "label"})
        if not keep_label:
            kept = [o for o in onx.graph.output if o.name != "label"]
            del onx.graph.output[:]
            onx.graph.output.extend(kept)
    else:
        onx = rename_tensors(onx, {outputs[0]: "predictions"})
    return Exported(
        model=onx,
        framework="sklearn",
        source=_source_runner(model, input_name, classifier, keep_label),
        exporter="skl2onnx",
        samples=samples,
        export_seconds=time.perf_counter() - start,
    )
