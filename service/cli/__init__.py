"""``infergate`` command line: ``serve`` (this package), ``keys``, and the converters' and the load
tester's command groups composed under ``convert`` and ``loadtest``."""

from __future__ import annotations

import typer

from converters.cli import app as convert_app
from loadtest.cli import app as loadtest_app
from service.cli.keys import app as keys_app
from service.cli.serve import serve

app = typer.Typer(help="infergate: Triton-compatible inference gateway.", no_args_is_help=True)
app.add_typer(convert_app, name="convert", help="Export trained models into a Triton repository.")
app.add_typer(loadtest_app, name="loadtest", help="Locust capacity tests against a v2 server.")
app.add_typer(keys_app, name="keys", help="Manage API keys (create, list, revoke).")
app.command()(serve)

__all__ = ["app"]
