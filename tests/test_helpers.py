"""The test plumbing itself: waits fail loudly, config edits that change nothing are caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from tests.helpers import ManualClock, edit_config, wait_until, wait_until_async


def test_wait_until_returns_the_first_truthy_value() -> None:
    answers = iter([0, None, "", 7])
    assert wait_until(lambda: next(answers), 60, "a number", interval=0) == 7


def test_wait_until_names_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"waiting for the queue to drain; last saw 0$"):
        wait_until(lambda: 0, 0, "the queue to drain")


def refuse() -> bool:
    raise ConnectionRefusedError("nobody listens")


def test_wait_until_ignores_only_the_listed_exceptions() -> None:
    with pytest.raises(AssertionError, match="last saw ConnectionRefusedError"):
        wait_until(refuse, 0, "a server", ignore=(ConnectionError,))
    with pytest.raises(ConnectionRefusedError):
        wait_until(refuse, 60, "a server")


async def test_wait_until_async_awaits_async_conditions() -> None:
    answers = iter([False, True])

    async def ready() -> bool:
        return next(answers)

    assert await wait_until_async(ready, 60, "ready") is True
    with pytest.raises(AssertionError, match=r"waiting for never; last saw \[\]"):
        await wait_until_async(lambda: [], 0, "never")


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(5.0)
    assert clock() == clock() == 5.0
    clock.advance(2.5)
    assert clock() == 7.5


def test_edit_config_writes_the_change_and_refuses_a_no_op(example_repo: Path, tmp_path: Path):
    shutil.copytree(example_repo / "digits_mlp", tmp_path / "digits_mlp")
    path = tmp_path / "digits_mlp" / "config.pbtxt"

    def one_row(config: model_config_pb2.ModelConfig) -> None:
        config.max_batch_size = 1

    assert edit_config(path, one_row).max_batch_size == 1
    assert "max_batch_size: 1\n" in path.read_text()
    with pytest.raises(AssertionError, match="changed nothing"):
        edit_config(path, one_row)  # already 1: an edit that silently does nothing fails
