"""User-facing conversion failures: one line, no traceback, non-zero exit."""

from __future__ import annotations

import re
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ConversionError(Exception):
    """A failure whose message is the whole story for the user (the CLI prints only it)."""


class ParityError(ConversionError):
    """The exported model does not answer like the source; nothing is published."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first meaningful line of an exception message, for one-line error reports."""
    text = _ANSI.sub("", str(exc)).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "---", "===")):
            text = line
            break
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
