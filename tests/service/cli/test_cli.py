"""`infergate serve` flags are generated from `Settings`: one per field; env vars still apply."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from service.cli import app
from service.cli.serve import flag, settings_from_context
from service.settings import Settings


def serve_command() -> Any:  # the click command typer builds for ``serve``
    return typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]


def parse(*argv: str) -> Settings:
    """What ``infergate serve ARGV`` would run with, without starting the servers."""
    return settings_from_context(serve_command().make_context("serve", list(argv)))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own INFERGATE_* variables must not decide these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("INFERGATE_"):
            monkeypatch.delenv(name)


def test_every_setting_is_a_described_flag() -> None:
    options = {param.name: param for param in serve_command().params}
    for name, field in Settings.model_fields.items():
        assert name in options, f"Settings.{name} has no serve flag"
        assert flag(name) in options[name].opts, name
        assert field.description, f"Settings.{name} needs a description (it is the --help text)"
        assert options[name].envvar == f"INFERGATE_{name.upper()}"
    assert set(options) == set(Settings.model_fields)  # and nothing but the settings
    assert options["batching"].secondary_opts == ["--no-batching"]
    assert "--load-model" in options["startup_models"].opts


def test_flags_left_off_leave_env_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse() == Settings()
    monkeypatch.setenv("INFERGATE_HTTP_PORT", "9100")
    monkeypatch.setenv("INFERGATE_BATCHING", "false")
    monkeypatch.setenv("INFERGATE_TRITON_URL", "a:8001,b:8001")
    settings = parse("--grpc-port", "0")
    assert (settings.http_port, settings.batching, settings.grpc_port) == (9100, False, 0)
    assert settings.triton_url == ["a:8001", "b:8001"]
    assert settings.host == Settings.model_fields["host"].default


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERGATE_HTTP_PORT", "9100")
    monkeypatch.setenv("INFERGATE_BATCHING", "false")
    monkeypatch.setenv("INFERGATE_LOG_LEVEL", "debug")
    settings = parse("--http-port", "9200", "--batching", "--log-level", "error")
    assert (settings.http_port, settings.batching, settings.log_level) == (9200, True, "error")


def test_on_demand_flags_take_sizes_as_people_write_them(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parse("--model-control-mode", "on_demand", "--model-memory-budget", "2GiB")
    assert settings.model_control_mode == "on_demand"
    assert settings.model_memory_budget == 2 * 1024**3
    assert parse("--model-memory-budget", "512MiB").model_memory_budget == 512 * 1024**2
    assert parse("--model-memory-budget", "1000000").model_memory_budget == 1_000_000
    assert parse("--model-load-timeout-s", "5").model_load_timeout_s == 5.0
    assert parse().model_memory_budget == 0
    monkeypatch.setenv("INFERGATE_MODEL_MEMORY_BUDGET", "1.5GiB")
    monkeypatch.setenv("INFERGATE_MODEL_CONTROL_MODE", "on_demand")
    settings = parse()
    assert settings.model_memory_budget == 3 * 512 * 1024**2
    assert settings.model_control_mode == "on_demand"


def test_existing_flags_keep_their_meaning() -> None:
    settings = parse(
        "--model-repo", "/models", "--backend", "triton", "--triton-url", "t1:8001,t2:8001",
        "--triton-url", "t3:8001", "--no-batching", "--model-control-mode", "explicit",
        "--load-model", "digits_mlp", "--load-model", "cancer_gbt,minilm_embed",
        "--redis-url", "redis://cache:6379/0", "--cache-enabled",
    )  # fmt: skip
    assert str(settings.model_repo) == "/models"
    assert settings.backend == "triton" and settings.model_control_mode == "explicit"
    assert settings.triton_url == ["t1:8001", "t2:8001", "t3:8001"]
    assert settings.batching is False
    assert settings.startup_models == ["digits_mlp", "cancer_gbt", "minilm_embed"]
    assert settings.redis_url == "redis://cache:6379/0" and settings.cache_enabled is True
    assert parse("--no-cache-enabled").cache_enabled is False
    assert parse("--startup-models", "a").startup_models == ["a"]


def test_api_keys_is_the_promised_spelling_of_the_key_file_flag(tmp_path) -> None:
    keys = tmp_path / "keys.json"
    assert parse("--api-keys", str(keys)).api_keys_file == keys
    assert parse("--api-keys-file", str(keys)).api_keys_file == keys
    options = {param.name: param for param in serve_command().params}
    assert {"--api-keys", "--api-keys-file"} <= set(options["api_keys_file"].opts)


def test_help_shows_defaults_choices_env_vars_and_sections() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    for expected in (
        "[default: 8000]",
        "[default: model_repo]",
        "[env var: INFERGATE_HTTP_PORT]",
        "[env var: INFERGATE_STARTUP_MODELS]",
        "<none|poll|explicit|on_demand>",
        "--no-batching",
        "REST (KServe v2) port",
        "Backends",
        "Cache",
    ):
        assert expected in text, expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--http-port", "eighty"], "valid integer"),
        (["--backend", "tensorflow"], "'tensorflow' is not one of"),
        (["--log-json", "yes"], "Got unexpected extra argument"),
    ],
)
def test_bad_flag_is_a_usage_error(argv: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["serve", *argv], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_value_found_by_settings_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings matches variable names without case; click does not read this one."""
    monkeypatch.setenv("infergate_cache_ttl_s", "forever")
    result = CliRunner().invoke(app, ["serve", "--http-port", "9000"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert (
        "--cache-ttl-s (or INFERGATE_CACHE_TTL_S)" in result.output
        and "valid number" in result.output
    )
    assert "Traceback" not in result.output
