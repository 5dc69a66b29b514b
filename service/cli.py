"""``infergate`` command line: serve, convert, loadtest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from converters.cli import app as convert_app
from loadtest.cli import app as loadtest_app

app = typer.Typer(help="infergate: Triton-compatible inference gateway.", no_args_is_help=True)
app.add_typer(convert_app, name="convert", help="Export trained models into a Triton repository.")
app.add_typer(loadtest_app, name="loadtest", help="Locust capacity tests against a v2 server.")


@app.command()
def serve(
    model_repo: Annotated[Optional[Path], typer.Option(envvar="INFERGATE_MODEL_REPO")] = None,
    host: Annotated[Optional[str], typer.Option(envvar="INFERGATE_HOST")] = None,
    http_port: Annotated[Optional[int], typer.Option(envvar="INFERGATE_HTTP_PORT")] = None,
    grpc_port: Annotated[Optional[int], typer.Option(envvar="INFERGATE_GRPC_PORT")] = None,
    redis_url: Annotated[Optional[str], typer.Option(envvar="INFERGATE_REDIS_URL")] = None,
    backend: Annotated[Optional[str], typer.Option(envvar="INFERGATE_BACKEND")] = None,
    triton_url: Annotated[
        Optional[list[str]], typer.Option(help="HOST:PORT of a Triton replica; repeatable")
    ] = None,
    no_batching: Annotated[bool, typer.Option("--no-batching", help="Run each request alone")] = False,
    model_control_mode: Annotated[Optional[str], typer.Option()] = None,
    log_level: Annotated[Optional[str], typer.Option()] = None,
) -> None:
    """Serve the model repository over KServe v2 REST and gRPC."""
    from service.server import run
    from service.settings import Settings

    overrides = {
        "model_repo": model_repo,
        "host": host,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "redis_url": redis_url,
        "backend": backend,
        "triton_url": triton_url or None,
        "model_control_mode": model_control_mode,
        "log_level": log_level,
    }
    if no_batching:
        overrides["batching"] = False
    settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    run(settings)


if __name__ == "__main__":
    app()
