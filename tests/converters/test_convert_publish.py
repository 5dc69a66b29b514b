"""Publishing: version numbering and policy, signature consistency, parity refusal, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from converters import publish as publish_module
from converters.cli import app
from converters.errors import ConversionError, ParityError
from converters.onnx_model import import_onnx
from converters.parity import Tolerances
from converters.pipeline import PublishOptions, convert
from converters.pytorch import InputSpec, export_pytorch
from converters.triton_config import read_config
from tests.converters import onnx_graphs, tiny_torch
from tests.converters.support import check_model_dir, tree_hash

runner = CliRunner()


def test_versions_stack_and_stay_servable(tmp_path: Path) -> None:
    src = onnx_graphs.linear(tmp_path / "lin.onnx")
    repo = tmp_path / "repo"
    first = convert(import_onnx(src), PublishOptions(repo, "lin", config=_cfg(cache=True)))
    assert first["version"] == 1
    assert not read_config(repo / "lin" / "config.pbtxt").HasField("version_policy")
    second = convert(import_onnx(src), PublishOptions(repo, "lin", quantize=True))
    assert second["version"] == 2
    config = read_config(repo / "lin" / "config.pbtxt")
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert config.response_cache.enable  # the existing config is kept, not regenerated
    for version in (1, 2):
        check_model_dir(repo / "lin", version)
    assert json.loads((repo / "lin" / "2" / "parity.json").read_text())["precision"] == "int8"

    third = convert(
        import_onnx(src), PublishOptions(repo, "lin", version=7, version_policy="latest")
    )
    assert third["version"] == 7
    config = read_config(repo / "lin" / "config.pbtxt")
    assert config.version_policy.latest.num_versions == 1


def _cfg(cache: bool = False, max_batch: int = 64):  # noqa: ANN202
    from converters.triton_config import ConfigOptions

    return ConfigOptions(max_batch_size=max_batch, response_cache=cache)


def test_existing_version_and_changed_signature_are_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    convert(import_onnx(onnx_graphs.linear(tmp_path / "a.onnx")), PublishOptions(repo, "lin"))
    before = tree_hash(repo)
    with pytest.raises(ConversionError, match="already exists"):
        convert(import_onnx(tmp_path / "a.onnx"), PublishOptions(repo, "lin", version=1))
    other = onnx_graphs.linear(tmp_path / "b.onnx", features=7)
    with pytest.raises(
        ConversionError, match="already has input 'x' = FP32 \\[5\\], but this model"
    ):
        convert(import_onnx(other), PublishOptions(repo, "lin"))
    assert tree_hash(repo) == before


def test_failed_parity_publishes_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    exported = export_pytorch(tiny_torch.trained_mlp(), [InputSpec("x", (-1, 6))], ["p"])
    convert(exported, PublishOptions(repo, "mlp"))
    before = tree_hash(repo)
    absurd = Tolerances(atol=0.0, rtol=0.0, min_cosine=1.5)
    with pytest.raises(ParityError, match="parity check failed for 'mlp'") as info:
        convert(exported, PublishOptions(repo, "mlp", tolerances=absurd))
    assert info.value.report["passed"] is False
    assert info.value.report["outputs"]["p"]["min_cosine"] <= 1.0
    assert tree_hash(repo) == before


def test_cli_parity_failure_exits_nonzero(tmp_path: Path) -> None:
    src = onnx_graphs.linear(tmp_path / "lin.onnx", features=32, outputs=8)
    repo = tmp_path / "repo"
    repo.mkdir()
    before = tree_hash(repo)
    result = runner.invoke(
        app,
        [
            "onnx",
            str(src),
            "--name",
            "lin",
            "--repo",
            str(repo),
            "--quantize",
            "int8",
            "--atol",
            "1e-9",
            "--rtol",
            "0",
        ],
    )
    assert result.exit_code == 1
    assert "parity check failed" in result.output and "nothing was published" in result.output
    assert tree_hash(repo) == before


def test_crash_during_publish_leaves_no_half_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    src = onnx_graphs.linear(tmp_path / "lin.onnx")
    convert(import_onnx(src), PublishOptions(repo, "lin"))
    before = tree_hash(repo)

    def crash(src_path: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publish_module.os, "rename", crash)
    with pytest.raises(ConversionError, match="No space left"):
        convert(import_onnx(src), PublishOptions(repo, "lin"))
    monkeypatch.setattr(publish_module.os, "rename", os.rename)
    assert tree_hash(repo) == before
    assert sorted(p.name for p in repo.iterdir()) == ["lin"]  # staging folder removed


def test_samples_file_and_pad_parameter(tmp_path: Path) -> None:
    import numpy as np

    src = onnx_graphs.token_sum(tmp_path / "tok.onnx")
    samples = tmp_path / "s.npz"
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    np.savez(samples, input_ids=ids, attention_mask=np.ones_like(ids))
    repo = tmp_path / "repo"
    result = runner.invoke(
        app,
        [
            "onnx",
            str(src),
            "--name",
            "tok",
            "--repo",
            str(repo),
            "--samples",
            str(samples),
            "--max-batch-size",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    config, _ = check_model_dir(repo / "tok", 1)
    assert config.parameters["infergate.pad_inputs"].string_value == "input_ids,attention_mask"
    assert list(config.input[0].dims) == [-1]
    report = json.loads((repo / "tok" / "1" / "parity.json").read_text())
    assert report["samples"] == 3
    assert config.input[0].data_type == mc.TYPE_INT64


def _publish_lin(src: Path, repo: Path, *flags: str) -> str:
    result = runner.invoke(app, ["onnx", str(src), "--name", "lin", "--repo", str(repo), *flags])
    assert result.exit_code == 0, result.output
    return result.output


def test_new_version_names_the_options_it_cannot_apply(tmp_path: Path) -> None:
    """Version 2+ keeps the model's config.pbtxt: differing serving flags are named, old -> new."""
    src = onnx_graphs.linear(tmp_path / "lin.onnx")
    repo = tmp_path / "repo"
    _publish_lin(src, repo, "--instances", "2", "--preferred-batch-size", "8")
    config_path = repo / "lin" / "config.pbtxt"
    first = read_config(config_path)

    same = _publish_lin(src, repo, "--instances", "2", "--preferred-batch-size", "8")
    assert "is kept" not in same  # nothing differs: nothing to warn about

    output = _publish_lin(
        src, repo, "--response-cache", "--max-queue-delay-us", "500", "--preferred-batch-size", "4"
    )
    for change in (
        "--instances 2 -> 1",
        "--response-cache off -> on",
        "--max-queue-delay-us 1000 -> 500",
        "--preferred-batch-size [8] -> [4]",
    ):
        assert change in output, change
    assert "edit that config.pbtxt" in output and "another --name" in output
    kept = read_config(config_path)
    assert kept.instance_group[0].count == 2 and not kept.response_cache.enable
    kept.ClearField("version_policy")
    first.ClearField("version_policy")
    assert kept == first  # only the version policy changed (now: all versions)
    report = json.loads((repo / "lin" / "3" / "parity.json").read_text())
    assert any("--instances 2 -> 1" in note for note in report["notes"])


def test_pad_inputs_change_is_named(tmp_path: Path) -> None:
    src = onnx_graphs.token_sum(tmp_path / "tok.onnx")
    repo = tmp_path / "repo"
    convert(import_onnx(src), PublishOptions(repo, "tok"))
    row = convert(import_onnx(src), PublishOptions(repo, "tok", pad_inputs=["input_ids"]))
    assert any("--pad-inputs input_ids,attention_mask -> input_ids" in n for n in row["notes"])
