"""PyTorch → ONNX: the dynamo exporter (one self-contained file), legacy as the fallback."""

from __future__ import annotations

import importlib
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.errors import ConversionError, first_line
from converters.parity import Arrays, make_samples, ort_runner
from converters.pipeline import Exported
from converters.progress import QUIET, Reporter
from converters.signature import TensorSpec, index_limits, rename_by_position

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


class _DropTorchvisionNotices(logging.Filter):
    """The dynamo exporter logs one warning per torchvision op when torchvision is absent."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's torchvision notices (and only those) while exporting."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    notices = _DropTorchvisionNotices()
    logger.addFilter(notices)
    try:
        yield
    finally:
        logger.removeFilter(notices)


def _torch_export(
    module: Any, args: tuple, specs: list[InputSpec], outputs: list[str], path: Path, **how: Any
) -> None:
    import torch

    with quiet_exporter():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[s.name for s in specs],
            output_names=outputs,
            **how,
        )


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
    how = {"dynamic_shapes": tuple(shapes), "external_data": False, "verbose": False}
    _torch_export(module, args, specs, outputs, path, dynamo=True, **how)


def _export_legacy(
    module: Any, args: tuple, specs: list[InputSpec], outputs: list[str], path: Path
) -> None:
    axes: dict[str, dict[int, str]] = {
        s.name: {i: ("batch" if i == 0 else f"dim_{i}") for i, d in enumerate(s.shape) if d == -1}
        for s in specs
    }
    axes.update({name: {0: "batch"} for name in outputs})
    _torch_export(
        module, args, specs, outputs, path, dynamic_axes=axes, opset_version=17, dynamo=False
    )


def dynamo_reason(exc: BaseException) -> str:
    """Why the dynamo exporter failed, in one line: the root cause, not torch's advice text."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    if root is not exc:
        return first_line(root)
    summary = str(exc).partition("## Exception summary")[2]
    for line in summary.splitlines():
        if line.strip():
            return first_line(Exception(line.strip())).removeprefix("Exception: ")
    return first_line(exc)


def _check_dynamic(model: onnx.ModelProto, specs: list[InputSpec], hint: str) -> None:
    """Run batch sizes 1 and 3 (and other dynamic sizes 5): exporters may bake example shapes in."""
    run = ort_runner(model)
    limits = index_limits(model)
    for n, seq in ((1, 5), (3, 9)):
        feed = make_samples([s.tensor_spec() for s in specs], n=n, seq_len=seq, index_limits=limits)
        try:
            run(feed)
        except Exception as exc:
            raise ConversionError(
                f"the exported graph's shapes cannot be made dynamic (fails for shapes "
                f"{ {k: list(v.shape) for k, v in feed.items()} }): {first_line(exc)}{hint}"
            ) from None


def _example_args(module: Any, inputs: list[InputSpec]) -> tuple:
    """Example tensors for tracing; token ids stay below every embedding table of the module."""
    import torch

    tables = [m.num_embeddings for m in module.modules() if isinstance(m, torch.nn.Embedding)]
    limits = {s.name: min(tables) for s in inputs if s.dtype.startswith(("int", "uint"))}
    example = make_samples(
        [s.tensor_spec() for s in inputs], n=2, seq_len=7, index_limits=limits if tables else None
    )
    return tuple(torch.from_numpy(example[s.name]) for s in inputs)


def _export_to(
    path: Path,
    module: Any,
    inputs: list[InputSpec],
    outputs: list[str],
    dynamo: bool,
    reporter: Reporter,
) -> tuple[str, list[str], str]:
    """Export into ``path``: the exporter used, notes, and why dynamo failed ('' if it did not)."""
    import torch

    args = _example_args(module, inputs)
    notes: list[str] = []
    dynamo_error = ""
    if dynamo and isinstance(module, torch.jit.ScriptModule):
        dynamo = False
        notes.append(
            "TorchScript module: the dynamo exporter cannot read it; used the legacy exporter"
        )
        reporter.note(notes[-1])
    if dynamo:
        try:
            with reporter.step("torch.onnx.export (dynamo)"):
                _export_dynamo(module, args, inputs, outputs, path)
            return "dynamo", notes, ""
        except Exception as exc:
            dynamo_error = dynamo_reason(exc)
            notes.append(f"dynamo exporter failed ({dynamo_error}); used the legacy exporter")
            reporter.note(notes[-1])
    try:
        with reporter.step("torch.onnx.export (legacy)"):
            _export_legacy(module, args, inputs, outputs, path)
    except Exception as exc:
        message = first_line(exc)
        if "UnsupportedOperator" in message or "is not supported" in message:
            raise ConversionError(f"unsupported operator: {message}") from None
        extra = f"; dynamo said: {dynamo_error}" if dynamo_error else ""
        raise ConversionError(f"PyTorch export failed: {message}{extra}") from None
    return "legacy", notes, dynamo_error


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
    if not inputs:
        raise ConversionError("PyTorch export needs --input specs (name:dims[:dtype])")
    output_names = output_names or ["output"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        exporter, notes, dynamo_error = _export_to(
            path, module, inputs, output_names, dynamo, reporter
        )
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
