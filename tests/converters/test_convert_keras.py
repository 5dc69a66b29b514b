"""Keras 3 path: ``model.export(format="onnx")`` on the torch backend, with meaningful names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from converters.cli import app
from tests.converters.support import check_model_dir, run_session, tree_hash

runner = CliRunner()


@pytest.fixture(scope="module")
def keras_model():  # noqa: ANN201 - keras objects are untyped
    from converters.keras import ensure_torch_backend

    keras = ensure_torch_backend()
    assert keras.backend.backend() == "torch" and os.environ.get("KERAS_BACKEND") == "torch"
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4, 4)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(64, 4, 4)), rng.integers(0, 3, 64), epochs=2, verbose=0)
    return model


def test_keras_file_via_cli(tmp_path: Path, keras_model) -> None:  # noqa: ANN001
    path = tmp_path / "tiny.keras"
    keras_model.save(path)
    repo = tmp_path / "repo"
    result = runner.invoke(
        app,
        [
            "keras",
            str(path),
            "--name",
            "kd",
            "--repo",
            str(repo),
            "--input-name",
            "pixels",
            "--output-name",
            "probabilities",
        ],
    )
    assert result.exit_code == 0, result.output
    config, session = check_model_dir(repo / "kd", 1)
    assert [i.name for i in config.input] == ["pixels"] and list(config.input[0].dims) == [4, 4]
    assert [o.name for o in config.output] == ["probabilities"]
    x = np.random.default_rng(1).normal(size=(7, 4, 4)).astype(np.float32)
    got = run_session(session, {"pixels": x})["probabilities"]
    want = np.asarray(keras_model.predict(x, verbose=0))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_default_names_replace_numeric_ones(tmp_path: Path, keras_model) -> None:  # noqa: ANN001
    from converters.keras import export_keras
    from converters.signature import graph_inputs, graph_outputs

    exported = export_keras(keras_model)
    assert [s.name for s in graph_inputs(exported.model)] == ["input"]
    assert [s.name for s in graph_outputs(exported.model)] == ["output"]
    assert graph_inputs(exported.model)[0].shape == (-1, 4, 4)


def test_not_a_keras_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK not really a zip")
    repo = tmp_path / "repo"
    repo.mkdir()
    before = tree_hash(repo)
    result = runner.invoke(app, ["keras", str(bad), "--name", "kd", "--repo", str(repo)])
    assert result.exit_code == 1 and "is not a Keras model" in result.output
    assert tree_hash(repo) == before
