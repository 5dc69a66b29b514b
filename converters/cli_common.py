"""Shared pieces of the ``infergate convert`` commands: options, error guard, result tables."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from converters.options import PublishOptions
    from converters.progress import Reporter
    from converters.triton_config import ConfigOptions

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=max(140, shutil.get_terminal_size((140, 24)).columns))

Repo = Annotated[Path, typer.Option("--repo", help="Triton model repository to publish into.")]
Name = Annotated[str, typer.Option("--name", help="Model name in the repository.")]
Version = Annotated[int | None, typer.Option("--version", help="Version to write (default: next).")]
MaxBatch = Annotated[int, typer.Option("--max-batch-size", help="0 disables batching.")]
Preferred = Annotated[list[int] | None, typer.Option("--preferred-batch-size", help="Repeatable.")]
QueueDelay = Annotated[int, typer.Option("--max-queue-delay-us", help="Dynamic batching delay.")]
Instances = Annotated[int, typer.Option("--instances", help="instance_group count (KIND_CPU).")]
Cache = Annotated[bool, typer.Option("--response-cache", help="response_cache { enable: true }.")]
Pad = Annotated[
    str | None, typer.Option("--pad-inputs", help="Comma list (default: token-named int inputs).")
]
Optimize = Annotated[bool, typer.Option("--optimize", help="Save ONNX Runtime's optimised graph.")]
Quantize = Annotated[str | None, typer.Option("--quantize", help="'int8': dynamic, per channel.")]
Fp16 = Annotated[bool, typer.Option("--fp16", help="fp16 weights, fp32 inputs/outputs.")]
Samples = Annotated[Path | None, typer.Option("--samples", help=".npy/.npz parity inputs.")]
Atol = Annotated[float | None, typer.Option("--atol", help="Absolute tolerance.")]
Rtol = Annotated[float | None, typer.Option("--rtol", help="Relative tolerance.")]
MinCos = Annotated[float | None, typer.Option("--min-cosine", help="Row-wise cosine floor.")]
Embedding = Annotated[list[str] | None, typer.Option("--embedding-output", help="Judge by cosine.")]
Policy = Annotated[str, typer.Option("--version-policy", help="all | latest | keep.")]
InNames = Annotated[list[str] | None, typer.Option("--input-name", help="Rename inputs, in order.")]
OutNames = Annotated[
    list[str] | None, typer.Option("--output-name", help="Rename outputs, in order.")
]


def quiet_frameworks() -> None:
    """Keep exporter/framework chatter (deprecation warnings, hub progress bars) off the console."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "skl2onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def guard(action: Callable[[], Any]) -> Any:
    """Run a command: precise errors as one line and exit 1, no traceback (unless debugging)."""
    from converters.errors import ConversionError, first_line

    quiet_frameworks()
    try:
        return action()
    except ConversionError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    except KeyboardInterrupt:
        err.print("[red]error:[/red] interrupted; nothing was published")
        raise typer.Exit(130) from None
    except Exception as exc:
        if os.environ.get("INFERGATE_DEBUG"):
            raise
        message = f"unexpected {first_line(exc)} (INFERGATE_DEBUG=1 shows a traceback)"
        err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def reporter() -> Reporter:
    from converters.progress import Reporter

    return Reporter(err)


@dataclass
class TargetFlags:
    """Where to publish and how to batch: options of every export command."""

    name: Name
    repo: Repo = Path("model_repo")
    version: Version = None
    max_batch_size: MaxBatch = 64
    preferred_batch_size: Preferred = None
    max_queue_delay_us: QueueDelay = 1000
    instances: Instances = 1

    def config_options(self, response_cache: bool = False) -> ConfigOptions:
        from converters.triton_config import ConfigOptions

        return ConfigOptions(
            max_batch_size=self.max_batch_size,
            preferred_batch_sizes=self.preferred_batch_size or None,
            max_queue_delay_us=self.max_queue_delay_us,
            instances=self.instances,
            response_cache=response_cache,
        )

    def publish_options(self) -> PublishOptions:
        """For publishers without the ONNX options (TensorRT): default tolerances and policy."""
        from converters.options import PublishOptions

        return PublishOptions(
            repo=self.repo, name=self.name, version=self.version, config=self.config_options()
        )


@dataclass
class OnnxFlags:
    """Caching, graph optimisation, parity and version policy: every command publishing ONNX."""

    response_cache: Cache = False
    optimize: Optimize = False
    samples: Samples = None
    atol: Atol = None
    rtol: Rtol = None
    version_policy: Policy = "all"


@dataclass
class NetworkFlags:
    """Padding, precision and embedding parity: the neural-network commands (not sklearn)."""

    pad_inputs: Pad = None
    quantize: Quantize = None
    fp16: Fp16 = False
    min_cosine: MinCos = None
    embedding_output: Embedding = None


FLAG_GROUPS: tuple[type, ...] = (TargetFlags, OnnxFlags, NetworkFlags)


def publish_options(
    target: TargetFlags, onnx: OnnxFlags, network: NetworkFlags | None = None
) -> PublishOptions:
    """PublishOptions from a command's flag groups (sklearn has no network flags: defaults)."""
    from converters.errors import ConversionError
    from converters.options import PublishOptions
    from converters.parity import Tolerances

    network = network or NetworkFlags()
    if network.quantize not in (None, "int8"):
        raise ConversionError(f"--quantize supports 'int8', not '{network.quantize}'")
    precision = "int8" if network.quantize else "fp16" if network.fp16 else "fp32"
    tolerances = Tolerances.for_precision(precision, bool(network.embedding_output))
    for key, value in (
        ("atol", onnx.atol),
        ("rtol", onnx.rtol),
        ("min_cosine", network.min_cosine),
    ):
        if value is not None:
            setattr(tolerances, key, value)
    pad = network.pad_inputs
    return PublishOptions(
        repo=target.repo,
        name=target.name,
        version=target.version,
        config=target.config_options(response_cache=onnx.response_cache),
        pad_inputs=None if pad is None else [p.strip() for p in pad.split(",") if p.strip()],
        optimize=onnx.optimize,
        quantize=bool(network.quantize),
        fp16=network.fp16,
        tolerances=tolerances,
        samples_path=onnx.samples,
        version_policy=onnx.version_policy,
    )


def _group_parameters(group: type) -> list[inspect.Parameter]:
    hints = get_type_hints(group, include_extras=True)
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=hints[f.name],
            default=inspect.Parameter.empty if f.default is MISSING else f.default,
        )
        for f in fields(group)
    ]


def export_command(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the options of each flag group it takes, and run it under :func:`guard`.

    A parameter typed ``TargetFlags`` (etc.) becomes that group's options on the command line;
    the command receives the group built from them. Adding a field to a group adds the option to
    every command that takes the group.
    """
    hints = get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for param in inspect.signature(command).parameters.values():
        if hints[param.name] in FLAG_GROUPS:
            groups[param.name] = hints[param.name]
            params.extend(_group_parameters(hints[param.name]))
        else:
            keyword = param.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            params.append(keyword.replace(annotation=hints[param.name]))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{command.__name__}: an option is declared twice in {names}")

    @functools.wraps(command)
    def run(**values: Any) -> None:
        built = {
            param: group(**{f.name: values.pop(f.name) for f in fields(group)})
            for param, group in groups.items()
        }
        guard(lambda: command(**values, **built))

    run.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def _parity_cell(row: dict[str, Any]) -> str:
    parts = []
    if row.get("max_abs_err") is not None:
        parts.append(f"{row['max_abs_err']:.2e}")
    if row.get("min_cosine") is not None and (
        row.get("precision") != "fp32" or "embed" in row["model"]
    ):
        parts.append(f"cos {row['min_cosine']:.6f}")
    return " / ".join(parts) or "-"


def print_rows(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    columns = ("model", "ver", "precision", "exporter", "parity max abs / cos", "size", "export s")
    for column in (*columns, "accuracy", "status"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        export_s = row.get("export_s")
        table.add_row(
            str(row["model"]),
            str(row["version"]),
            str(row.get("precision")),
            str(row.get("exporter")),
            _parity_cell(row),
            f"{row['size_bytes'] / 1e6:.2f} MB",
            "-" if export_s is None else f"{export_s:.2f}",
            f"{row['accuracy']:.3f}" if row.get("accuracy") is not None else "-",
            str(row.get("status")),
        )
    out.print(table)
    for row in rows:
        for note in row.get("notes") or []:
            out.print(f"  {row['model']} v{row['version']}: {note}", soft_wrap=True, markup=False)
