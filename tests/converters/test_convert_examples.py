"""The example repository: real training + export of each model, idempotence, --force rebuilds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from converters.cli import app
from converters.examples import build_examples
from converters.triton_config import read_config
from tests.converters.support import check_model_dir, run_session, tree_hash

runner = CliRunner()
SMALL = ["digits_mlp", "digits_cnn", "cancer_gbt", "keras_digits"]


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    repo = tmp_path_factory.mktemp("examples") / "model_repo"
    return repo, build_examples(repo, only=SMALL)


def test_small_examples_are_accurate_and_consistent(small_repo: tuple[Path, list[dict]]) -> None:
    from sklearn.datasets import load_breast_cancer, load_digits

    repo, rows = small_repo
    assert [r["model"] for r in rows] == SMALL and all(r["status"] == "built" for r in rows)
    digits = load_digits()
    pixels = digits.data.astype(np.float32)
    shapes = {"digits_mlp": (-1, 64), "digits_cnn": (-1, 1, 8, 8), "keras_digits": (-1, 8, 8)}
    for name, shape in shapes.items():
        config, session = check_model_dir(repo / name, 1)
        assert [i.name for i in config.input] == ["input"] and list(config.input[0].dims) == list(
            shape[1:]
        )
        assert [o.name for o in config.output] == ["probabilities"] and list(
            config.output[0].dims
        ) == [10]
        probs = run_session(session, {"input": pixels.reshape(shape)})["probabilities"]
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert np.mean(probs.argmax(axis=1) == digits.target) > 0.9, name
        report = json.loads((repo / name / "1" / "parity.json").read_text())
        assert report["passed"] and report["max_abs_err"] < 1e-4
    cancer = load_breast_cancer()
    config, session = check_model_dir(repo / "cancer_gbt", 1)
    assert list(config.input[0].dims) == [30]
    probs = run_session(session, {"input": cancer.data.astype(np.float32)})["probabilities"]
    assert np.mean(probs.argmax(axis=1) == cancer.target) > 0.9
    assert all(r["accuracy"] > 0.9 for r in rows)


def test_rebuild_skips_complete_models(small_repo: tuple[Path, list[dict]]) -> None:
    repo, _ = small_repo
    before = tree_hash(repo)
    rows = build_examples(repo, only=SMALL)
    assert {r["status"] for r in rows} == {"exists"}
    assert tree_hash(repo) == before


def test_force_rebuilds_and_incomplete_models_are_rebuilt(
    small_repo: tuple[Path, list[dict]],
) -> None:
    repo, _ = small_repo
    (repo / "cancer_gbt" / "1" / "parity.json").unlink()  # incomplete: must be rebuilt
    rows = build_examples(repo, only=["cancer_gbt"])
    assert rows[0]["status"] == "built" and (repo / "cancer_gbt" / "1" / "parity.json").is_file()
    result = runner.invoke(
        app, ["examples", "--repo", str(repo), "--only", "cancer_gbt", "--force"]
    )
    assert result.exit_code == 0, result.output
    assert "cancer_gbt" in result.output and "built" in result.output
    assert sorted(p.name for p in repo.iterdir()) == sorted(SMALL)  # no staging leftovers
    check_model_dir(repo / "cancer_gbt", 1)


def test_unknown_example_name() -> None:
    result = runner.invoke(app, ["examples", "--repo", "/nonexistent/x", "--only", "resnet"])
    assert result.exit_code == 1 and "unknown example models ['resnet']" in result.output


@pytest.mark.slow
def test_minilm_exact_and_int8_models(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    rows = build_examples(repo, only=["minilm_embed"])
    assert [(r["model"], r["version"], r["precision"]) for r in rows] == [
        ("minilm_embed", 1, "fp32"),
        ("minilm_embed_int8", 1, "int8"),
    ], "one export: the exact model keeps the name (the default), int8 gets its own"
    assert rows[0]["max_abs_err"] < 1e-4 and rows[0]["min_cosine"] > 0.9999
    assert rows[1]["min_cosine"] >= 0.95
    assert sorted(p.name for p in repo.iterdir()) == ["minilm_embed", "minilm_embed_int8"]
    for name in ("minilm_embed_int8", "minilm_embed"):
        config, session = check_model_dir(repo / name, 1)
        assert not (repo / name / "2").exists()
    assert config.max_batch_size == 32 and config.response_cache.enable
    assert config.parameters["infergate.pad_inputs"].string_value == (
        "input_ids,attention_mask,token_type_ids"
    )
    assert [list(i.dims) for i in config.input] == [[-1], [-1], [-1]]
    # the tokenizer the gateway uses for text: sentence-transformers' 256-token limit
    assert config.parameters["infergate.tokenizer.max_length"].string_value == "256"
    assert all(
        (repo / m / "1" / "tokenizer.json").is_file() for m in ("minilm_embed", "minilm_embed_int8")
    )
    assert {r["status"] for r in build_examples(repo, only=["minilm_embed_int8"])} == {"exists"}
    ids = np.array([[101, 7592, 2088, 102, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    emb = run_session(
        session, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    )["sentence_embedding"]
    assert emb.shape == (1, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)


def test_a_repository_with_int8_as_version_2_is_split_without_a_rebuild(
    example_repo: Path, tmp_path: Path
) -> None:
    """Built before the int8 model had its own name: minilm_embed version 2 was int8, and the
    latest, so a request without a version got it; now version 1 (fp32) is all it serves."""
    old = tmp_path / "model_repo"
    shutil.copytree(example_repo / "minilm_embed", old / "minilm_embed")
    shutil.copytree(example_repo / "minilm_embed_int8" / "1", old / "minilm_embed" / "2")
    int8_bytes = (old / "minilm_embed" / "2" / "model.onnx").read_bytes()
    rows = build_examples(old, only=["minilm_embed", "minilm_embed_int8"])
    assert [(r["model"], r["version"], r["status"]) for r in rows] == [
        ("minilm_embed", 1, "exists"),
        ("minilm_embed_int8", 1, "exists"),
    ]
    assert sorted(p.name for p in (old / "minilm_embed").iterdir()) == ["1", "config.pbtxt"]
    moved = old / "minilm_embed_int8"
    assert (moved / "1" / "model.onnx").read_bytes() == int8_bytes
    assert (moved / "1" / "tokenizer.json").is_file()
    assert read_config(moved / "config.pbtxt").name == "minilm_embed_int8"
    assert json.loads((moved / "1" / "parity.json").read_text())["model"] == "minilm_embed_int8"
    assert sorted(p.name for p in old.iterdir()) == ["minilm_embed", "minilm_embed_int8"]


def test_cli_import_stays_light() -> None:
    """`infergate --help` must not pay for torch/keras/sklearn imports."""
    code = (
        "import sys, converters.cli; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(converters.cli.app, ['--help']); "
        "assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('torch', 'keras', 'sklearn', 'onnxruntime') if m in sys.modules]; "
        "assert not heavy, heavy; print(r.output)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in (
        "pytorch",
        "sklearn",
        "keras",
        "onnx",
        "tensorrt",
        "examples",
        "python-backend",
    ):
        assert command in proc.stdout
