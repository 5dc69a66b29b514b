"""``infergate loadtest run`` end to end: Locust CSV/HTML, report.md/.json and PNG plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, Gateway
from tests.loadtest.models import MLP

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"


def test_capacity_runner_writes_report_and_plots(tiny_gateway: Gateway, tmp_path: Path) -> None:
    out = tmp_path / "capacity"
    command = [sys.executable, "-m", "service.cli", "loadtest", "run"]
    command += ["--host", tiny_gateway.base_url, "--model", MLP, "--users", "1,2"]
    command += ["--duration", "3", "--slo-p99-ms", "1000", "--out", str(out), "--rows", "4"]
    command += ["--user-class", "RestBinaryUser", "--user-class", "RestJsonUser"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust.html", "report.md"):
        assert (out / name).stat().st_size > 0, name
    for name in ("timeline.png", "capacity.png", "summary.png"):
        assert (out / name).read_bytes()[:8] == PNG, name

    report = json.loads((out / "report.json").read_text())
    assert [step["users"] for step in report["steps"]] == [1, 2]
    for step in report["steps"]:
        assert step["requests"] > 0 and step["failures"] == 0
        assert step["rows_per_s"] == pytest.approx(4 * step["throughput"], rel=1e-3)
    best = max(report["steps"], key=lambda step: step["throughput"])
    assert report["capacity"]["users"] == best["users"]  # a 1 s SLO holds on any machine
    assert report["locust"]["exit_code"] == 0
    markdown = (out / "report.md").read_text()
    assert f"at {best['users']} users" in markdown
    assert markdown.count("✅") == 2

    # Re-judged against an SLO no step can meet, the same run has no capacity.
    rerender = [sys.executable, "-m", "service.cli", "loadtest", "report", str(out)]
    result = subprocess.run(
        [*rerender, "--slo-p99-ms", "0.001"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "no step met the SLO" in result.stdout
    assert json.loads((out / "report-slo-0.001ms.json").read_text())["capacity"] is None
    assert json.loads((out / "report.json").read_text()) == report  # the run's own, untouched


def test_unreachable_host_fails_clearly(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "service.cli", "loadtest", "run", "--host"]
    command += ["http://127.0.0.1:9", "--model", MLP, "--users", "1", "--duration", "1"]
    command += ["--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no step met the SLO" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["capacity"] is None
    assert report["steps"][0]["failures"] > 0  # the connection error, counted
