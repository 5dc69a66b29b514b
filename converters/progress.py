"""Progress output for long conversion steps (rich on stderr; silent for library callers)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


class Reporter:
    """Prints one line per finished step; the silent default keeps library use quiet."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.console is None:
            yield
            return
        with self.console.status(f"{title}..."):
            yield
        self.console.print(
            f"[green]✓[/green] {title} [dim]({time.perf_counter() - start:.1f} s)[/dim]"
        )

    def note(self, message: str) -> None:
        if self.console is not None:
            self.console.print(f"[yellow]![/yellow] {message}", soft_wrap=True)

    def info(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message)


QUIET = Reporter()
