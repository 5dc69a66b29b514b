"""The capacity verdict: highest throughput among steps that meet the SLO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loadtest import _latency
from loadtest._capacity import rerender, user_steps
from loadtest._plots import write_plots
from loadtest._report import CapacityReport, format_ms, render_markdown, write_report
from loadtest.cli import app as loadtest_app


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


def test_latencies_print_at_a_precision_that_fits_them() -> None:
    assert [format_ms(v) for v in (0.42, 0.4213, 7.156, 49.0, 49.34, 1250.4)] == [
        "0.42",
        "0.42",
        "7.16",
        "49",
        "49.3",
        "1250",
    ]
    assert (format_ms(None), format_ms(0.0)) == ("–", "0")
    markdown = render_markdown(report([step(4, 2000, 0.42)]))
    assert "p99 0.42 ms.**" in markdown
    assert "| 0.1 | 0.21 | 0.42 | ✅ |" in markdown  # p50, p95, p99 in the table


def test_histogram_keeps_sub_millisecond_percentiles() -> None:
    assert [_latency.bucket(v) for v in (0.42137, 7.1549, 1234.5)] == [0.421, 7.15, 1230.0]
    one_to_hundred = {float(ms): 1 for ms in range(1, 101)}
    assert [_latency.percentile(one_to_hundred, p) for p in (0.5, 0.95, 0.99)] == [50, 95, 99]
    assert _latency.percentile({0.31: 98, 0.42: 1, 3.5: 1}, 0.99) == 0.42
    assert _latency.percentile({}, 0.99) is None


def test_worker_reports_join_the_master_counts() -> None:
    saved = _latency.counts.copy()
    try:
        _latency.counts.clear()
        for response_time in (0.4213, 0.4208, 12.0):
            _latency.record(response_time)
        sent = _latency.take_report()  # what a worker sends; its counts start again
        assert not _latency.counts
        _latency.add_report(sent)
        _latency.add_report([(0.421, 3)])
        assert _latency.counts == {0.421: 5, 12.0: 1}
    finally:
        _latency.counts.clear()
        _latency.counts.update(saved)


def test_other_slo_is_written_beside_the_original(tmp_path: Path) -> None:
    original = report([step(1, 100, 5), step(8, 700, 30)])
    write_report(original, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("report.md", "report.json")}
    assert original.capacity is not None and original.capacity["users"] == 8

    rejudged, written = rerender(tmp_path, 10.0)
    assert rejudged.capacity is not None and rejudged.capacity["users"] == 1
    assert {path.name for path in written} == {
        "report-slo-10ms.md",
        "report-slo-10ms.json",
        "timeline-slo-10ms.png",
        "capacity-slo-10ms.png",
        "summary-slo-10ms.png",
    }
    beside = json.loads((tmp_path / "report-slo-10ms.json").read_text())
    assert (beside["slo_p99_ms"], beside["capacity"]["users"]) == (10.0, 1)
    assert "p99 ≤ 10 ms" in (tmp_path / "report-slo-10ms.md").read_text()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_report_command_names_what_it_wrote(tmp_path: Path) -> None:
    write_report(report([step(1, 100, 5)]), tmp_path)
    result = CliRunner().invoke(loadtest_app, ["report", str(tmp_path), "--slo-p99-ms", "0.5"])
    assert result.exit_code == 0, result.output
    assert "no step met the SLO" in result.output
    assert "Written: report-slo-0.5ms.md, report-slo-0.5ms.json" in result.output
    assert json.loads((tmp_path / "report.json").read_text())["capacity"]["users"] == 1
