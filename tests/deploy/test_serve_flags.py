"""Every ``infergate serve`` argument list in compose, k8s and the image is one the CLI takes.

The arguments are parsed by the real typer/click command (unknown flags and bad types fail), then
turned into ``Settings`` by the function ``serve`` uses, so a value the gateway refuses fails here.
"""

from __future__ import annotations

import pytest

from tests.deploy.deploy_support import serve_argvs, serve_command

ARGVS = serve_argvs()


def test_deployment_files_run_the_gateway() -> None:
    """compose (GPU + CPU), both k8s Deployments' base and the image's CMD are all collected."""
    sources = {key.split(":")[0] for key in ARGVS}
    assert {"docker-compose.yml", "docker-compose.cpu.yml", "gateway.Dockerfile"} <= sources
    assert any(source.startswith("deploy/k8s/") for source in sources)


@pytest.mark.parametrize("source", sorted(ARGVS))
def test_serve_arguments_are_real_cli_options(source: str) -> None:
    from service.cli.serve import settings_from_context

    command = serve_command()
    argv = ARGVS[source]
    assert argv[0] == "serve"
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    flags = {arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("--")}
    assert flags - known == set(), f"{source}: unknown flags"
    # typer ships its own click; its UsageError is not ``click.UsageError``, so catch broadly
    try:
        context = command.make_context("serve", list(argv[1:]))
    except Exception as exc:  # pragma: no cover - the message is the assertion
        pytest.fail(f"{source}: {type(exc).__name__}: {exc}")
    settings_from_context(context)  # the serve command's own conversion: raises on a bad value


def test_unknown_flag_is_rejected() -> None:
    """The check above can fail: click refuses an option ``serve`` does not have."""
    command = serve_command()
    with pytest.raises(Exception, match="No such option"):
        command.make_context("serve", ["--triton-urls", "triton:8001"])
    with pytest.raises(Exception, match="integer"):
        command.make_context("serve", ["--http-port", "eighty"])
