"""TensorRT path: without tensorrt + a CUDA GPU it must say so, exit non-zero, and write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from converters.cli import app
from converters.tensorrt import missing_requirements
from tests.converters import onnx_graphs
from tests.converters.support import tree_hash

runner = CliRunner()
MISSING = missing_requirements()


@pytest.mark.skipif(not MISSING, reason="this machine can build TensorRT engines")
def test_no_gpu_gives_clear_message_and_writes_nothing(tmp_path: Path) -> None:
    src = onnx_graphs.linear(tmp_path / "lin.onnx")
    repo = tmp_path / "repo"
    onnx_graphs.linear(repo / "other" / "1" / "model.onnx")
    before = tree_hash(repo)
    result = runner.invoke(
        app, ["tensorrt", str(src), "--name", "lin_trt", "--repo", str(repo), "--fp16"]
    )
    assert result.exit_code == 1
    assert "cannot build a TensorRT engine" in result.output
    assert "Nothing was written" in result.output
    assert MISSING[0].split(" (")[0] in result.output  # the first reason is named
    assert "Traceback" not in result.output
    assert tree_hash(repo) == before
    assert not (repo / "lin_trt").exists()


@pytest.mark.gpu
@pytest.mark.skipif(bool(MISSING), reason=f"needs TensorRT and a CUDA GPU: {'; '.join(MISSING)}")
def test_engine_build_on_gpu(tmp_path: Path) -> None:  # pragma: no cover - GPU machines only
    from converters.triton_config import read_config

    src = onnx_graphs.linear(tmp_path / "lin.onnx")
    repo = tmp_path / "repo"
    result = runner.invoke(
        app,
        ["tensorrt", str(src), "--name", "lin_trt", "--repo", str(repo), "--max-batch-size", "8"],
    )
    assert result.exit_code == 0, result.output
    config = read_config(repo / "lin_trt" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    assert (repo / "lin_trt" / "1" / "model.plan").stat().st_size > 0
