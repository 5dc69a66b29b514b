"""Shared pieces of the ``infergate convert`` commands: options, error guard, result tables."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
TokenizerPath = Annotated[
    Path | None,
    typer.Option(
        "--tokenizer", help="tokenizer.json or a Hugging Face folder: the model then takes text."
    ),
]
TokenizerMaxLength = Annotated[
    int | None,
    typer.Option("--tokenizer-max-length", help="Tokens per text (default: model_max_length)."),
]
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


def reporter() -> Any:
    from converters.progress import Reporter

    return Reporter(err)


def publish_options(args: dict[str, Any]) -> Any:
    """PublishOptions from a command's keyword arguments (absent options take their defaults)."""
    from converters.errors import ConversionError
    from converters.parity import Tolerances
    from converters.pipeline import PublishOptions
    from converters.triton_config import ConfigOptions

    quantize = args.get("quantize")
    if quantize not in (None, "int8"):
        raise ConversionError(f"--quantize supports 'int8', not '{quantize}'")
    precision = "int8" if quantize else "fp16" if args.get("fp16") else "fp32"
    tolerances = Tolerances.for_precision(precision, bool(args.get("embedding_output")))
    for key in ("atol", "rtol", "min_cosine"):
        if args.get(key) is not None:
            setattr(tolerances, key, args[key])
    config = ConfigOptions(
        max_batch_size=args["max_batch_size"],
        preferred_batch_sizes=args.get("preferred_batch_size") or None,
        max_queue_delay_us=args["max_queue_delay_us"],
        instances=args["instances"],
        response_cache=args.get("response_cache", False),
    )
    pad = args.get("pad_inputs")
    tokenizer = None
    if args.get("tokenizer") is not None:
        from converters.tokenizer import TokenizerSpec

        tokenizer = TokenizerSpec.from_path(args["tokenizer"], args.get("tokenizer_max_length"))
    return PublishOptions(
        repo=args["repo"],
        name=args["name"],
        version=args.get("version"),
        config=config,
        pad_inputs=None if pad is None else [p.strip() for p in pad.split(",") if p.strip()],
        optimize=args.get("optimize", False),
        quantize=bool(quantize),
        fp16=args.get("fp16", False),
        tolerances=tolerances,
        samples_path=args.get("samples"),
        version_policy=args.get("version_policy", "all"),
        tokenizer=tokenizer,
    )


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
