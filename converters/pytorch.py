"""PyTorch → ONNX: the dynamo exporter (one self-contained file), legacy as the fallback."""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.errors import ConversionError, first_line
from converters.parity import Arrays, make_samples, ort_runner
from converters.pipeline import Exported
from converters.progress import QUIET, Reporter
from converters.signature import TensorSpec, rename_by_position

_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
    "uint8": np.uint8,
}


@dataclass(frozen=True)
class InputSpec:
    """A named input; -1 marks a dynamic axis (axis 0 is the batch axis)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """``name:d0,d1,...[:dtype]``, e.g. ``input:-1,64`` or ``input_ids:-1,-1:int64``."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ConversionError(f"input spec '{text}' must look like name:-1,64[:float32]")
        try:
            shape = tuple(int(d) for d in parts[1].split(",") if d.strip())
        except ValueError:
            raise ConversionError(
                f"input spec '{text}': dims must be integers (-1 = dynamic)"
            ) from None
        dtype = parts[2] if len(parts) == 3 else "float32"
        if dtype not in _DTYPES:
            raise ConversionError(f"input spec '{text}': dtype must be one of {sorted(_DTYPES)}")
        return cls(parts[0], shape, dtype)

    def tensor_spec(self) -> TensorSpec:
        dtype = np.dtype(_DTYPES[self.dtype])
        return TensorSpec(self.name, dtype, self.shape, onnx.helper.np_dtype_to_tensor_dtype(dtype))


def load_module(model: str, weights: Path | None = None) -> Any:
    """``package.module:factory`` (+ optional state dict) or a TorchScript file, in eval mode."""
    import torch

    path = Path(model)
    if ":" in model and not path.exists():
        module_name, _, attr = model.partition(":")
        if "" not in sys.path:
            sys.path.insert(0, "")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConversionError(f"cannot import '{model}': {first_line(exc)}") from None
        try:
            net = (
                factory()
                if callable(factory) and not isinstance(factory, torch.nn.Module)
                else factory
            )
        except Exception as exc:
            raise ConversionError(
                f"'{model}' failed to build the module: {first_line(exc)}"
            ) from None
        if not isinstance(net, torch.nn.Module):
            raise ConversionError(f"'{model}' returned {type(net).__name__}, not a torch.nn.Module")
        if weights is not None:
            net.load_state_dict(_load_state_dict(weights))
        return net.eval()
    if not path.is_file():
        raise ConversionError(f"model file not found: {path}")
    if weights is not None:
        raise ConversionError("--weights applies to module:factory models, not TorchScript files")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise ConversionError(f"{path} is not a TorchScript model: {first_line(exc)}") from None


def _load_state_dict(weights: Path) -> dict[str, Any]:
    import torch

    if not weights.is_file():
        raise ConversionError(f"weights file not found: {weights}")
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConversionError(f"{weights} is not a PyTorch state dict: {first_line(exc)}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict):
        raise ConversionError(f"{weights} holds {type(state).__name__}, not a state dict")
    return state


def torch_runner(module: Any, input_names: list[str], output_names: list[str]) -> Any:
    """Run the original module on numpy inputs (no grad, eval mode)."""
    import torch

    def run(feed: Arrays) -> Arrays:
        with torch.no_grad():
            result = module(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in input_names))
        if isinstance(result, dict):
            result = list(result.values())
        if not isinstance(result, (list, tuple)):
            result = [result]
        if len(result) != len(output_names):
            raise ConversionError(f"module returned {len(result)} outputs, expected {output_names}")
        return {n: r.detach().cpu().numpy() for n, r in zip(output_names, result, strict=True)}

    return run


def _export_dynamo(
    module: Any, args: tuple, specs: list[InputSpec], outputs: list[str], path: Path
) -> None:
    import torch

    dims: dict[int, Any] = {}
    shapes = []
    for spec in specs:
        axes = {}
        for axis, size in enumerate(spec.shape):
            if size == -1:
                dims.setdefault(axis, torch.export.Dim("batch" if axis == 0 else f"dim_{axis}"))
                axes[axis] = dims[axis]
        shapes.append(axes)
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=[s.name for s in specs],
        output_names=outputs,
        dynamic_shapes=tuple(shapes),
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def _export_legacy(
    module: Any, args: tuple, specs: list[InputSpec], outputs: list[str], path: Path
) -> None:
    import torch

    axes: dict[str, dict[int, str]] = {
        s.name: {i: ("batch" if i == 0 else f"dim_{i}") for i, d in enumerate(s.shape) if d == -1}
        for s in specs
    }
    axes.update({name: {0: "batch"} for name in outputs})
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=[s.name for s in specs],
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )


def _check_dynamic(model: onnx.ModelProto, specs: list[InputSpec], hint: str) -> None:
    """Run batch sizes 1 and 3 (and other dynamic sizes 5): exporters may bake example shapes in."""
    run = ort_runner(model)
    for n, seq in ((1, 5), (3, 9)):
        feed = make_samples([s.tensor_spec() for s in specs], n=n, seq_len=seq)
        try:
            run(feed)
        except Exception as exc:
            raise ConversionError(
                f"the exported graph's shapes cannot be made dynamic (fails for shapes "
                f"{ {k: list(v.shape) for k, v in feed.items()} }): {first_line(exc)}{hint}"
            ) from None


def export_pytorch(
    module: Any,
    inputs: list[InputSpec],
    output_names: list[str],
    *,
    dynamo: bool = True,
    embedding_outputs: list[str] | None = None,
    samples: Arrays | None = None,
    reporter: Reporter = QUIET,
) -> Exported:
    """Export with dynamo (legacy fallback, reported), then name and check the graph."""
    import torch

    if not inputs:
        raise ConversionError("PyTorch export needs --input specs (name:dims[:dtype])")
    output_names = output_names or ["output"]
    example = make_samples([s.tensor_spec() for s in inputs], n=2, seq_len=7)
    args = tuple(torch.from_numpy(example[s.name]) for s in inputs)
    notes: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        exporter = "dynamo" if dynamo else "legacy"
        dynamo_error = ""
        if dynamo:
            try:
                with reporter.step("torch.onnx.export (dynamo)"):
                    _export_dynamo(module, args, inputs, output_names, path)
            except Exception as exc:
                dynamo_error = first_line(exc)
                notes.append(f"dynamo exporter failed ({dynamo_error}); used the legacy exporter")
                reporter.note(notes[-1])
                exporter = "legacy"
        if exporter == "legacy":
            try:
                with reporter.step("torch.onnx.export (legacy)"):
                    _export_legacy(module, args, inputs, output_names, path)
            except Exception as exc:
                message = first_line(exc)
                if "UnsupportedOperator" in message or "is not supported" in message:
                    raise ConversionError(f"unsupported operator: {message}") from None
                extra = f"; dynamo said: {dynamo_error}" if dynamo_error else ""
                raise ConversionError(f"PyTorch export failed: {message}{extra}") from None
        if list(Path(tmp).iterdir()) != [path]:
            notes.append("exporter wrote extra files; weights were inlined")
        model = onnx.load(str(path), load_external_data=True)
    model = rename_by_position(model, [s.name for s in inputs], output_names)
    hint = f" (dynamo said: {dynamo_error})" if dynamo_error else ""
    _check_dynamic(model, inputs, hint)
    return Exported(
        model=model,
        framework="pytorch",
        source=torch_runner(module, [s.name for s in inputs], output_names),
        exporter=f"torch.onnx {exporter}",
        notes=notes,
        samples=samples,
        embedding_outputs=embedding_outputs or [],
        export_seconds=time.perf_counter() - start,
    )
