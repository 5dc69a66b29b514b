"""Existing ONNX files: checks, dynamic batch repair, renames, optimisation, fp16 and int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from converters.cli import app
from tests.converters import onnx_graphs
from tests.converters.support import check_model_dir, run_session, tree_hash

runner = CliRunner()


def _convert(*args: str) -> object:
    return runner.invoke(app, ["onnx", *args])


def test_fixed_batch_is_made_dynamic_and_renamed(tmp_path: Path) -> None:
    src = onnx_graphs.linear(tmp_path / "fixed.onnx", batch=1)
    repo = tmp_path / "repo"
    result = _convert(
        str(src),
        "--name",
        "lin",
        "--repo",
        str(repo),
        "--input-name",
        "features",
        "--output-name",
        "probabilities",
        "--max-batch-size",
        "16",
    )
    assert result.exit_code == 0, result.output
    config, session = check_model_dir(repo / "lin", 1)
    assert [i.name for i in config.input] == ["features"] and list(config.input[0].dims) == [5]
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    reference = onnx.load(str(src))
    w, b = (onnx.numpy_helper.to_array(t) for t in reference.graph.initializer)
    logits = x @ w + b
    want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        run_session(session, {"features": x})["probabilities"], want, rtol=1e-5
    )


def test_batch_that_cannot_be_dynamic(tmp_path: Path) -> None:
    src = onnx_graphs.fixed_reshape(tmp_path / "fixed.onnx")
    repo = tmp_path / "repo"
    result = _convert(str(src), "--name", "f", "--repo", str(repo))
    assert result.exit_code == 1 and "cannot be made dynamic" in result.output
    assert not repo.exists()
    result = _convert(str(src), "--name", "f", "--repo", str(repo), "--max-batch-size", "0")
    assert result.exit_code == 0, result.output
    config, _ = check_model_dir(repo / "f", 1)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 2, 3]
    assert not config.HasField("dynamic_batching")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "model file not found"),
        (lambda p: (p.write_bytes(b"\x00garbage\xff" * 10), p)[1], "is not an ONNX model"),
        (onnx_graphs.unknown_op, "not a valid ONNX model"),
    ],
)
def test_bad_files(tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    path = make(tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    onnx_graphs.linear(repo / "keep" / "1" / "model.onnx")
    before = tree_hash(repo)
    result = _convert(str(path), "--name", "m", "--repo", str(repo))
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert tree_hash(repo) == before


@pytest.mark.parametrize(
    ("flags", "precision"),
    [(["--optimize"], "fp32"), (["--fp16"], "fp16"), (["--quantize", "int8"], "int8")],
)
def test_transforms_keep_signature(tmp_path: Path, flags: list[str], precision: str) -> None:
    import json

    src = onnx_graphs.linear(tmp_path / "lin.onnx", features=32, outputs=8)
    repo = tmp_path / "repo"
    result = _convert(str(src), "--name", "lin", "--repo", str(repo), *flags)
    assert result.exit_code == 0, result.output
    config, session = check_model_dir(repo / "lin", 1)
    assert session.get_inputs()[0].type == "tensor(float)"  # fp16 keeps fp32 I/O
    report = json.loads((repo / "lin" / "1" / "parity.json").read_text())
    assert report["precision"] == precision and report["passed"]
    ops = {n.op_type for n in onnx.load(str(repo / "lin" / "1" / "model.onnx")).graph.node}
    if precision == "int8":
        assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    if precision == "fp16":
        assert "Cast" in ops
