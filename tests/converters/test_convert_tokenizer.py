"""`infergate convert ... --tokenizer`: tokenizer.json beside the model, its settings in
config.pbtxt parameters, and a gateway that then takes text (real export, real tokenizer)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from converters.cli import app
from converters.example_models import minilm_dir
from service.models.sources import LocalOnnxSource, parse_config
from service.settings import Settings
from tests.converters import onnx_graphs

runner = CliRunner()


def test_onnx_export_with_tokenizer(example_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    source = example_repo / "minilm_embed" / "1" / "model.onnx"
    result = runner.invoke(
        app,
        [
            "onnx",
            str(source),
            "--name",
            "embedder",
            "--repo",
            str(repo),
            "--max-batch-size",
            "8",
            "--embedding-output",
            "sentence_embedding",
            "--tokenizer",
            str(minilm_dir()),
            "--tokenizer-max-length",
            "128",
        ],
    )
    assert result.exit_code == 0, result.output
    config = parse_config(repo / "embedder" / "config.pbtxt")
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert parameters["infergate.tokenizer.max_length"] == "128"
    assert parameters["infergate.tokenizer.truncation_side"] == "right"
    assert parameters["infergate.tokenizer.pad_id"] == "0"
    assert parameters["infergate.tokenizer.text_input"] == "text"
    assert [i.name for i in config.input] == ["input_ids", "attention_mask", "token_type_ids"]
    written = json.loads((repo / "embedder" / "1" / "tokenizer.json").read_text())
    assert written == json.loads((minilm_dir() / "tokenizer.json").read_text())

    loader = LocalOnnxSource(repo, Settings(model_repo=repo))
    asyncio.run(loader.load("embedder"))
    tokenizer = loader.tokenizer("embedder", "1")
    assert tokenizer is not None and tokenizer.options.max_length == 128
    (item,) = tokenizer.encode_sync(["hello world"], truncate=True)
    np.testing.assert_array_equal(item.ids, [101, 7592, 2088, 102])


def test_a_tokenizer_needs_an_input_ids_input(tmp_path: Path) -> None:
    src = onnx_graphs.linear(tmp_path / "linear.onnx")
    result = runner.invoke(
        app,
        ["onnx", str(src), "--name", "lin", "--repo", str(tmp_path / "repo")]
        + ["--tokenizer", str(minilm_dir())],
    )
    assert result.exit_code == 1
    assert "a tokenizer feeds input_ids, which the graph lacks" in result.output
    assert not (tmp_path / "repo" / "lin").exists()
