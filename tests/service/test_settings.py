"""Settings that are computed: the worker count of ``--workers auto``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, usable_cores


@pytest.mark.parametrize(
    ("cpu_max", "limit"),
    [("max 100000", None), ("150000 100000", 2), ("100000 100000", 1), ("50000 100000", 1)],
)
def test_usable_cores_follow_the_cgroup_quota(tmp_path: Path, cpu_max: str, limit: int | None):
    cores = len(os.sched_getaffinity(0))
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max + "\n")
    assert usable_cores(path) == (cores if limit is None else min(cores, limit))
    assert usable_cores(tmp_path / "absent") == cores


def test_workers_auto_is_the_usable_cores_at_most_eight() -> None:
    assert Settings(workers="auto").worker_count() == min(usable_cores(), 8)
    assert Settings(workers="3").worker_count() == 3  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Settings(workers=0)
