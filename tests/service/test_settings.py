"""Settings that are computed: the worker count of ``--workers auto``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.host import cpu_quota, usable_cores
from service.settings import Settings


@pytest.mark.parametrize(
    ("cpu_max", "limit"),
    [("max 100000", None), ("150000 100000", 2), ("100000 100000", 1), ("50000 100000", 1)],
)
def test_usable_cores_follow_the_cgroup_v2_quota(tmp_path: Path, cpu_max: str, limit: int | None):
    cores = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert usable_cores(tmp_path) == (cores if limit is None else min(cores, limit))
    assert usable_cores(tmp_path / "absent") == cores


@pytest.mark.parametrize(
    ("quota_us", "period_us", "limit"),
    [
        ("-1", "100000", None),
        ("150000", "100000", 2),
        ("100000", "100000", 1),
        ("5000", "10000", 1),
    ],
)
def test_usable_cores_follow_the_cgroup_v1_quota(
    tmp_path: Path, quota_us: str, period_us: str, limit: int | None
) -> None:
    """Docker on a cgroup v1 host (``docker run --cpus``, compose ``cpus``): cfs quota/period."""
    cores = len(os.sched_getaffinity(0))
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota_us + "\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(period_us + "\n")
    assert cpu_quota(tmp_path) == (None if limit is None else int(quota_us) / int(period_us))
    assert usable_cores(tmp_path) == (cores if limit is None else min(cores, limit))


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 1), (3, 2), (4, 3), (16, 8), (64, 8)])
def test_workers_auto_leaves_the_executor_a_core(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int
) -> None:
    monkeypatch.setattr("service.settings.usable_cores", lambda: cores)
    assert Settings(workers="auto").worker_count() == workers


def test_workers_can_be_set() -> None:
    assert Settings(workers="3").worker_count() == 3  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Settings(workers=0)
