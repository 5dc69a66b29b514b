"""Keras 3 → ONNX with ``model.export(format="onnx")`` under the torch backend (no TensorFlow).

KERAS_BACKEND must be set before keras is first imported, so this module only imports keras inside
functions, after :func:`ensure_torch_backend`. TensorFlow-backend models would go through tf2onnx,
an optional extra that is not installed here.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.errors import ConversionError, first_line
from converters.parity import Arrays
from converters.pipeline import Exported
from converters.progress import QUIET, Reporter
from converters.signature import rename_by_position


def ensure_torch_backend() -> Any:
    """Import keras on the torch backend, or explain why this process cannot."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        try:
            import tf2onnx  # noqa: F401
        except ImportError:
            raise ConversionError(
                "keras runs on the TensorFlow backend here and tf2onnx is not installed; set "
                "KERAS_BACKEND=torch (the supported path) or `pip install tensorflow tf2onnx`"
            ) from None
    elif backend != "torch":
        raise ConversionError(
            f"keras backend '{backend}' is not supported; set KERAS_BACKEND=torch"
        )
    return keras


def load_keras(path: Path) -> Any:
    if not path.is_file():
        raise ConversionError(f"model file not found: {path}")
    keras = ensure_torch_backend()
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as exc:
        raise ConversionError(f"{path} is not a Keras model: {first_line(exc)}") from None


def _export_tf2onnx(model: Any, path: Path) -> None:  # pragma: no cover - needs TensorFlow
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec([None, *i.shape[1:]], i.dtype, name=i.name) for i in model.inputs]
    tf2onnx.convert.from_keras(model, input_signature=spec, output_path=str(path))


def export_keras(
    model: Any,
    *,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    samples: Arrays | None = None,
    reporter: Reporter = QUIET,
) -> Exported:
    """Export and rename the graph's inputs/outputs (Keras names the output e.g. '35')."""
    keras = ensure_torch_backend()
    n_in, n_out = len(model.inputs), len(model.outputs)
    input_names = input_names or (["input"] if n_in == 1 else [f"input_{i}" for i in range(n_in)])
    output_names = output_names or (
        ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    )
    start = time.perf_counter()
    try:  # a freshly loaded model has never been called, and export needs traced shapes
        warm = [
            np.zeros([2, *[d or 8 for d in i.shape[1:]]], dtype=str(i.dtype)) for i in model.inputs
        ]
        model(warm[0] if n_in == 1 else warm, training=False)
    except Exception as exc:
        raise ConversionError(f"the Keras model fails on zero inputs: {first_line(exc)}") from None
    from converters.pytorch import quiet_exporter

    with tempfile.TemporaryDirectory() as tmp, reporter.step("keras ONNX export"), quiet_exporter():
        path = Path(tmp) / "model.onnx"
        try:
            if keras.backend.backend() == "tensorflow":
                _export_tf2onnx(model, path)
            else:
                model.export(str(path), format="onnx", verbose=False)
        except Exception as exc:
            raise ConversionError(f"Keras ONNX export failed: {first_line(exc)}") from None
        onx = onnx.load(str(path), load_external_data=True)
    onx = rename_by_position(onx, input_names, output_names)
    elapsed = time.perf_counter() - start

    def run(feed: Arrays) -> Arrays:
        args = [feed[name] for name in input_names]
        result = model(args[0] if n_in == 1 else args, training=False)
        result = result if isinstance(result, (list, tuple)) else [result]
        return {
            name: np.asarray(keras.ops.convert_to_numpy(r))
            for name, r in zip(output_names, result, strict=True)
        }

    return Exported(
        model=onx,
        framework="keras",
        source=run,
        exporter=f"keras.export ({keras.backend.backend()} backend)",
        samples=samples,
        export_seconds=elapsed,
    )
