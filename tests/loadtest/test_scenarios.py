"""Every scenario of ``locust -f loadtest/`` against a real gateway: right answers, no failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import Gateway
from tests.loadtest.locust_run import read_failures, read_stats, run_locust
from tests.loadtest.models import EMBED, MLP

pytestmark = pytest.mark.slow

USERS = ["RestJsonUser", "RestBinaryUser", "GrpcUser", "CacheMixUser", "EmbeddingUser"]


def test_locust_lists_every_user_class() -> None:
    result = run_locust("--list")
    assert result.returncode == 0, result.stderr
    listed = {line.strip() for line in result.stdout.splitlines()[1:]}
    assert listed == set(USERS)


def test_all_users_fixed_run_has_zero_failures(
    tiny_gateway: Gateway, tiny_repo: Path, tmp_path: Path
) -> None:
    """A plain fixed-user run (no step shape): every answer is value-checked against ORT."""
    prefix = tmp_path / "run"
    result = run_locust(
        *("-u", "5", "-r", "5", "-t", "4s", "--host", tiny_gateway.base_url),
        *("--grpc-host", tiny_gateway.grpc_url, "--embed-model", EMBED, "--rows", "3"),
        *("--model-repo", str(tiny_repo), "--check-fraction", "1", "--hit-ratio", "0.5"),
        csv_prefix=prefix,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stats = read_stats(prefix)
    total = stats[("", "Aggregated")]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0, read_failures(prefix)
    counts = {key: int(row["Request Count"]) for key, row in stats.items()}
    # REST JSON and binary users spread over both models (--model empty = all READY models).
    for model in (MLP, EMBED):
        assert counts.get(("POST", f"{model} json"), 0) > 0
        assert counts.get(("POST", f"{model} binary"), 0) > 0
        assert counts.get(("grpc", f"{model} grpc"), 0) > 0, "gRPC calls must be counted"
    assert counts[("POST", f"{EMBED} json [text]")] > 0
    cache_rows = [key for key in counts if key[1].endswith(("[repeat]", "[fresh]"))]
    assert {key[1].rsplit(" ", 1)[1] for key in cache_rows} == {"[repeat]", "[fresh]"}
    # The run lasted its -t: a step shape must not have taken over a fixed-user run.
    assert "Shape" not in result.stderr


def test_step_shape_ends_by_itself(tiny_gateway: Gateway, tmp_path: Path) -> None:
    steps_path = tmp_path / "steps.json"
    result = run_locust(
        *("--host", tiny_gateway.base_url, "--model", MLP, "RestBinaryUser"),
        *("--step-users", "1,2", "--step-duration", "2", "--step-report", str(steps_path)),
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(steps_path.read_text())
    assert [step["users"] for step in report["steps"]] == [1, 2]
    for step in report["steps"]:
        assert step["requests"] > 0 and step["failures"] == 0
        assert step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"]
    assert max(point["users"] for point in report["timeline"]) == 2


def test_missing_model_is_reported_not_hidden(tiny_gateway: Gateway, tmp_path: Path) -> None:
    prefix = tmp_path / "run"
    result = run_locust(
        *("-u", "1", "-r", "1", "-t", "4s", "--host", tiny_gateway.base_url),
        *("--model", "no_such_model", "RestJsonUser"),
        csv_prefix=prefix,
    )
    assert result.returncode == 1
    failures = read_failures(prefix)
    assert failures and "no_such_model" in failures[0]["Error"]
