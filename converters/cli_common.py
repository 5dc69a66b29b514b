"""Shared pieces of the ``infergate convert`` commands: consoles, error guard, result tables."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from converters.progress import Reporter

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=max(140, shutil.get_terminal_size((140, 24)).columns))


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
