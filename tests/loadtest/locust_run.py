"""Run the real ``locust`` CLI on ``loadtest/`` and read its CSV statistics.

Locust monkey-patches the process with gevent on import, so tests never import it: they
run it as a subprocess, like a user would.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def run_locust(
    *args: str, csv_prefix: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest"), "--headless"]
    if csv_prefix is not None:
        command += ["--csv", str(csv_prefix)]
    return subprocess.run(
        [*command, "--only-summary", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_stats(csv_prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    """``(Type, Name) -> row`` of ``<prefix>_stats.csv``; the total is ``("", "Aggregated")``."""
    with open(f"{csv_prefix}_stats.csv", newline="") as handle:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}


def read_failures(csv_prefix: Path) -> list[dict[str, str]]:
    with open(f"{csv_prefix}_failures.csv", newline="") as handle:
        return list(csv.DictReader(handle))
