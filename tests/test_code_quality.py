"""The style rules CI enforces: ruff (lint + format) and mypy over the packages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

PATHS = ["service", "converters", "loadtest", "bench", "tests"]


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", *PATHS],
        ["ruff", "format", "--check", *PATHS],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_code_quality(command):
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
