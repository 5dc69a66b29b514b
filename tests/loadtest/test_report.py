"""The capacity verdict: highest throughput among steps that meet the SLO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest._capacity import user_steps
from loadtest._plots import write_plots
from loadtest._report import CapacityReport, render_markdown, write_report


def step(users: int, throughput: float, p99: float | None, failures: int = 0, **extra: object):
    return {
        "users": users,
        "seconds": 10.0,
        "requests": int(throughput * 10),
        "failures": failures,
        "throughput": throughput,
        "p50_ms": None if p99 is None else p99 / 4,
        "p95_ms": None if p99 is None else p99 / 2,
        "p99_ms": p99,
        "ramp_complete": True,
        **extra,
    }


def report(steps: list[dict[str, object]]) -> CapacityReport:
    return CapacityReport("http://gpu:8000", "digits_mlp", ["RestJsonUser"], 2, 50.0, 0.01, steps)


def test_capacity_is_best_throughput_within_slo() -> None:
    result = report(
        [
            step(1, 100, 5),
            step(8, 700, 30),
            step(16, 900, 49),
            step(32, 950, 80),  # faster, but p99 over the SLO
            step(64, 990, 20, failures=500),  # 5 % failures
            step(128, 999, 10, ramp_complete=False),  # never had all its users
        ]
    )
    assert [s["meets_slo"] for s in result.steps] == [True, True, True, False, False, False]
    assert result.capacity is not None and result.capacity["users"] == 16
    assert result.capacity["rows_per_s"] == 1800
    markdown = render_markdown(result)
    assert "**Capacity: 900.0 req/s (1800.0 rows/s) at 16 users, p99 49 ms.**" in markdown
    assert markdown.count("\n| ") == 7  # header + six steps


def test_no_passing_step_means_no_capacity(tmp_path: Path) -> None:
    result = report([step(1, 10, 500), step(2, 0, None)])
    assert result.capacity is None
    assert "no step met the SLO" in render_markdown(result)
    paths = write_report(result, tmp_path)
    assert CapacityReport.from_json(json.loads(paths["json"].read_text())).capacity is None
    result.timeline = [
        {"t": 1.0, "users": 1, "throughput": 10.0, "p50_ms": None, "p95_ms": None, "p99_ms": None}
    ]
    for path in write_plots(result, tmp_path).values():
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_user_steps() -> None:
    assert user_steps("1,8,32,64", 0, 0) == [1, 8, 32, 64]
    assert user_steps("", 64, 16) == [1, 16, 32, 48, 64]
    assert user_steps("", 10, 4) == [1, 4, 8, 10]
    with pytest.raises(ValueError):
        user_steps("", 0, 0)
