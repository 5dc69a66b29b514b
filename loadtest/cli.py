"""``infergate loadtest``: capacity runs with Locust.

Locust also imports this file when given ``-f loadtest/``: it must stay light and define no
User, so heavy imports (locust, matplotlib) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from loadtest._capacity import RunConfig

app = typer.Typer(no_args_is_help=True)


@app.command()
def run(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Base URL of a KServe v2 server, e.g. http://gpu1:8000")
    ],
    model: Annotated[str, typer.Option(help="Model(s), comma-separated; empty = all READY")] = "",
    users: Annotated[str, typer.Option(help="User counts per step, e.g. 1,8,32,64")] = "",
    max_users: Annotated[int, typer.Option(help="Instead of --users: up to this many")] = 0,
    step: Annotated[int, typer.Option(help="With --max-users: users added per step")] = 0,
    spawn_rate: Annotated[float, typer.Option(help="Users started per second; 0 = at once")] = 0.0,
    duration: Annotated[float, typer.Option(help="Seconds each step is held")] = 30.0,
    slo_p99_ms: Annotated[float, typer.Option(help="Latency SLO: p99 in milliseconds")] = 100.0,
    max_failure_ratio: Annotated[float, typer.Option(help="Failures a step may have")] = 0.001,
    out: Annotated[Path, typer.Option(help="Directory for CSV, HTML, report and plots")] = Path(
        "loadtest-results"
    ),
    user_class: Annotated[
        list[str] | None, typer.Option(help="Locust User class; repeatable (default RestJsonUser)")
    ] = None,
    rows: Annotated[int, typer.Option(help="Rows (batch size) per request")] = 1,
    protocol: Annotated[str, typer.Option(help="json|binary|grpc for CacheMix/Embedding")] = "json",
    grpc_host: Annotated[str, typer.Option(help="HOST:PORT for GrpcUser")] = "",
    model_repo: Annotated[str, typer.Option(help="Local repository for value checks")] = "",
    check_fraction: Annotated[float, typer.Option(help="Share of answers value-checked")] = 0.05,
    locust_arg: Annotated[
        list[str] | None, typer.Option(help="Extra argument passed to locust; repeatable")
    ] = None,
) -> None:
    """Step the load up, find the highest throughput whose p99 meets the SLO, plot it.

    Exit status: 0 with a capacity, 1 when no step met the SLO, 2 when Locust could not run.
    """
    from rich.console import Console
    from rich.markdown import Markdown

    from loadtest._capacity import CapacityRunError, run_capacity
    from loadtest._report import render_markdown

    config = _run_config(ctx.params)
    steps = config.users
    console = Console()
    console.print(f"Locust: {len(steps)} steps {steps} x {duration:g}s against {host} ...")
    try:
        report = run_capacity(config)
    except CapacityRunError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    console.print(Markdown(render_markdown(report)))
    console.print(f"Report, plots, CSV and HTML in {out}/")
    if report.capacity is None:
        raise typer.Exit(1)


def _run_config(params: dict[str, Any]) -> RunConfig:
    """The options carry RunConfig's field names; only these three change shape on the way."""
    from dataclasses import fields

    from loadtest._capacity import RunConfig, user_steps

    try:
        steps = user_steps(params["users"], params["max_users"], params["step"])
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    given = {
        **params,
        "users": steps,
        "user_classes": params["user_class"] or ["RestJsonUser"],
        "locust_args": params["locust_arg"] or [],
    }
    return RunConfig(**{field.name: given[field.name] for field in fields(RunConfig)})


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="Directory of a previous run")],
    slo_p99_ms: Annotated[
        float | None,
        typer.Option(help="Judge against another SLO (written beside: report-slo-<N>ms.md)"),
    ] = None,
) -> None:
    """Re-render report.md/.json and the plots of a previous run, or judge it by another SLO."""
    from loadtest._capacity import rerender
    from loadtest._report import render_markdown

    result, written = rerender(out, slo_p99_ms)
    typer.echo(render_markdown(result))
    typer.echo("Written: " + ", ".join(path.name for path in written))
