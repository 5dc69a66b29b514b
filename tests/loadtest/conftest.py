"""A gateway over two tiny real ONNX models, shared by the load-test tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Gateway, start_gateway
from tests.loadtest.models import build_tiny_repo


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repo(tmp_path_factory.mktemp("loadtest_repo"))


@pytest.fixture(scope="session")
def tiny_gateway(tiny_repo: Path) -> Iterator[Gateway]:
    server = start_gateway(tiny_repo)
    yield server
    server.stop()
