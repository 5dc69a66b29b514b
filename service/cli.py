"""``infergate`` command line: serve, convert, loadtest.

Flags left out fall back to ``INFERGATE_*`` variables and then to the defaults in ``Settings``:
pydantic-settings reads the environment, so the CLI only passes what was given on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from converters.cli import app as convert_app
from loadtest.cli import app as loadtest_app

app = typer.Typer(help="infergate: Triton-compatible inference gateway.", no_args_is_help=True)
app.add_typer(convert_app, name="convert", help="Export trained models into a Triton repository.")
app.add_typer(loadtest_app, name="loadtest", help="Locust capacity tests against a v2 server.")


@app.command()
def serve(
    model_repo: Annotated[
        Path | None, typer.Option(help="Triton model repository [INFERGATE_MODEL_REPO]")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address [INFERGATE_HOST]")] = None,
    http_port: Annotated[int | None, typer.Option(help="REST port [INFERGATE_HTTP_PORT]")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port, 0 = off [INFERGATE_GRPC_PORT]")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Shared result cache [INFERGATE_REDIS_URL]")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="onnxruntime | triton [INFERGATE_BACKEND]")
    ] = None,
    triton_url: Annotated[
        list[str] | None,
        typer.Option(help="HOST:PORT of a Triton replica, repeatable [INFERGATE_TRITON_URL]"),
    ] = None,
    no_batching: Annotated[
        bool, typer.Option("--no-batching", help="Run every request alone [INFERGATE_BATCHING]")
    ] = False,
    model_control_mode: Annotated[
        str | None, typer.Option(help="none | poll | explicit [INFERGATE_MODEL_CONTROL_MODE]")
    ] = None,
    load_model: Annotated[
        list[str] | None,
        typer.Option(
            help="explicit mode: load at startup, repeatable; '*' = all [INFERGATE_STARTUP_MODELS]"
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="[INFERGATE_LOG_LEVEL]")] = None,
) -> None:
    """Serve the model repository over KServe v2 REST and gRPC."""
    from pydantic import ValidationError

    from service.server import run
    from service.settings import Settings

    given: dict[str, object] = {
        "model_repo": model_repo,
        "host": host,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "redis_url": redis_url,
        "backend": backend,
        "triton_url": triton_url or None,
        "model_control_mode": model_control_mode,
        "startup_models": load_model or None,
        "log_level": log_level,
        "batching": False if no_batching else None,
    }
    try:
        settings = Settings.model_validate(
            {key: value for key, value in given.items() if value is not None}
        )
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    run(settings)


if __name__ == "__main__":
    app()
