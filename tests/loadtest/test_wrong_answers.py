"""Wrong answers from a real v2 server are Locust failures, never fast successes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.loadtest.answer_server import serve_answers
from tests.loadtest.locust_run import read_failures, read_stats, run_locust
from tests.loadtest.models import MLP

pytestmark = pytest.mark.slow

EXPECTED_ERROR = {
    "shape": "shape [2, 9], expected [2, 10]",
    "values": "differs from local ONNX Runtime",
    "names": "output names",
    "dtype": "datatype FP64, expected FP32",
}


def run_against(url: str, repo: Path, prefix: Path) -> tuple[int, int]:
    result = run_locust(
        *("-u", "2", "-r", "2", "-t", "4s", "--host", url, "--model", MLP, "--rows", "2"),
        *("--model-repo", str(repo), "--check-fraction", "1", "RestJsonUser"),
        csv_prefix=prefix,
    )
    total = read_stats(prefix)[("", "Aggregated")]
    assert result.returncode in (0, 1), result.stderr[-3000:]
    return int(total["Request Count"]), int(total["Failure Count"])


def test_right_answers_pass(tiny_repo: Path, tmp_path: Path) -> None:
    """The control: the same server answering correctly yields no failures."""
    with serve_answers(tiny_repo, "right") as url:
        requests, failures = run_against(url, tiny_repo, tmp_path / "run")
    assert requests > 0
    assert failures == 0, read_failures(tmp_path / "run")


@pytest.mark.parametrize("mode", sorted(EXPECTED_ERROR))
def test_wrong_answers_are_failures(mode: str, tiny_repo: Path, tmp_path: Path) -> None:
    with serve_answers(tiny_repo, mode) as url:
        requests, failures = run_against(url, tiny_repo, tmp_path / "run")
    assert requests > 0
    assert failures == requests
    errors = " ".join(row["Error"] for row in read_failures(tmp_path / "run"))
    assert EXPECTED_ERROR[mode] in errors
