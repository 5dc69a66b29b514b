"""The capacity runner: one headless Locust run with the step shape, then report and plots.

Only KServe v2 endpoints are used, so the same run measures infergate or Triton itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from loadtest._report import CapacityReport, write_report

LOADTEST_DIR = Path(__file__).resolve().parent


class CapacityRunError(RuntimeError):
    """Locust did not produce per-step statistics (bad host, options or a crash)."""


@dataclass
class RunConfig:
    host: str
    users: list[int]
    out: Path
    duration: float = 30.0
    spawn_rate: float = 0.0
    slo_p99_ms: float = 100.0
    max_failure_ratio: float = 0.001
    model: str = ""
    user_classes: list[str] = field(default_factory=lambda: ["RestJsonUser"])
    rows: int = 1
    protocol: str = "json"
    grpc_host: str = ""
    model_repo: str = ""
    check_fraction: float = 0.05
    locust_args: list[str] = field(default_factory=list)

    @property
    def steps_path(self) -> Path:
        return self.out / "steps.json"


def user_steps(users: str | None, max_users: int | None, step: int | None) -> list[int]:
    """``--users 1,8,32`` or ``--max-users 64 --step 16`` (-> 1,16,32,48,64)."""
    from loadtest._options import parse_users

    if users:
        return parse_users(users)
    if not max_users or max_users < 1:
        raise ValueError("give --users or --max-users")
    step = step or max(1, max_users // 4)
    counts = [1, *range(step, max_users + 1, step)]
    if counts[-1] != max_users:
        counts.append(max_users)
    return sorted(set(counts))


def locust_command(config: RunConfig) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOADTEST_DIR),
        "--headless",
        "--only-summary",
        "--host",
        config.host,
        "--step-users",
        ",".join(str(u) for u in config.users),
        "--step-duration",
        f"{config.duration:g}",
        "--step-spawn-rate",
        f"{config.spawn_rate:g}",
        "--step-report",
        str(config.steps_path),
        "--csv",
        str(config.out / "locust"),
        "--csv-full-history",
        "--html",
        str(config.out / "locust.html"),
        "--model",
        config.model,
        "--rows",
        str(config.rows),
        "--protocol",
        config.protocol,
        "--check-fraction",
        f"{config.check_fraction:g}",
    ]
    if config.grpc_host:
        command += ["--grpc-host", config.grpc_host]
    if config.model_repo:
        command += ["--model-repo", config.model_repo]
    return [*command, *config.locust_args, *config.user_classes]


def run_capacity(config: RunConfig) -> CapacityReport:
    """Run Locust (log in ``out/locust.log``), then write report.md/.json and the plots."""
    from loadtest._plots import write_plots

    config.out.mkdir(parents=True, exist_ok=True)
    config.steps_path.unlink(missing_ok=True)
    command = locust_command(config)
    timeout = len(config.users) * config.duration + 120
    log_path = config.out / "locust.log"
    with log_path.open("wb") as log:
        try:
            process = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
            exit_code = process.returncode
        except subprocess.TimeoutExpired:
            exit_code = -1
    if not config.steps_path.is_file():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise CapacityRunError(f"locust exited {exit_code} without step statistics:\n{tail}")
    data = json.loads(config.steps_path.read_text())
    report = CapacityReport(
        host=config.host,
        models=config.model,
        user_classes=config.user_classes,
        rows=config.rows,
        slo_p99_ms=config.slo_p99_ms,
        max_failure_ratio=config.max_failure_ratio,
        steps=data["steps"],
        timeline=data["timeline"],
        locust={"command": command, "exit_code": exit_code, "log": str(log_path)},
    )
    write_report(report, config.out)
    write_plots(report, config.out)
    return report


def rerender(out: Path, slo_p99_ms: float | None = None) -> tuple[CapacityReport, list[Path]]:
    """Rebuild report and plots from ``out/report.json``; returns the report and files written.

    Judged against another SLO, the result goes beside the run's own report
    (``report-slo-<N>ms.md/.json``, ``*-slo-<N>ms.png``), which stays as it was.
    """
    from loadtest._plots import write_plots

    data = json.loads((out / "report.json").read_text())
    suffix = ""
    if slo_p99_ms is not None:
        data["slo_p99_ms"] = slo_p99_ms
        suffix = f"-slo-{slo_p99_ms:g}ms"
    report = CapacityReport.from_json(data)
    written = write_report(report, out, f"report{suffix}") | write_plots(report, out, suffix)
    return report, list(written.values())
