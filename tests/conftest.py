"""Session fixtures shared by every test package: the example repository and a gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, Gateway, start_gateway

EXAMPLES = [
    "digits_mlp",
    "digits_cnn",
    "cancer_gbt",
    "minilm_embed",
    "minilm_embed_int8",
    "keras_digits",
]


@pytest.fixture(scope="session")
def example_repo() -> Path:
    """The six example models, exported by the converters into the project's model_repo/."""
    from converters.examples import build_examples

    repo = ROOT / "model_repo"
    build_examples(repo)
    missing = [name for name in EXAMPLES if not (repo / name / "config.pbtxt").is_file()]
    assert not missing, f"example models not built: {missing}"
    return repo


@pytest.fixture(scope="session")
def gateway(example_repo: Path) -> Iterator[Gateway]:
    """One gateway over the example repository, shared by tests that do not disturb it."""
    server = start_gateway(example_repo)
    yield server
    server.stop()
