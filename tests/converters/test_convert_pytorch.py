"""PyTorch path: dynamo export, legacy fallback, TorchScript, module:factory + weights (CLI)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from converters import pytorch as torch_converter
from converters.cli import app
from converters.errors import ConversionError
from converters.parity import make_samples
from converters.pipeline import PublishOptions, convert
from converters.pytorch import InputSpec, export_pytorch
from converters.signature import graph_inputs, index_limits
from tests.converters import tiny_torch
from tests.converters.support import check_model_dir, run_session, tree_hash

runner = CliRunner()


def test_dynamo_export_publishes_a_checked_version(tmp_path: Path) -> None:
    model = tiny_torch.trained_mlp()
    exported = export_pytorch(model, [InputSpec("features", (-1, 6))], ["probabilities"])
    assert exported.exporter == "torch.onnx dynamo" and not exported.notes
    row = convert(exported, PublishOptions(tmp_path, "mlp"))
    assert row["version"] == 1 and row["max_abs_err"] < 1e-5

    config, session = check_model_dir(tmp_path / "mlp", 1)
    assert config.max_batch_size == 64 and list(config.input[0].dims) == [6]
    x = np.random.default_rng(3).normal(size=(5, 6)).astype(np.float32)
    got = run_session(session, {"features": x})["probabilities"]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    report = json.loads((tmp_path / "mlp" / "1" / "parity.json").read_text())
    assert report["passed"] and report["outputs"]["probabilities"]["max_abs_err"] < 1e-5


def test_legacy_fallback_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr(torch_converter, "_export_dynamo", broken)
    exported = export_pytorch(
        tiny_torch.TinyCNN().eval(), [InputSpec("image", (-1, 1, 4, 4))], ["p"]
    )
    assert exported.exporter == "torch.onnx legacy"
    assert "simulated dynamo failure" in exported.notes[0] and "legacy" in exported.notes[0]
    row = convert(exported, PublishOptions(tmp_path, "cnn", config=_config(8)))
    assert row["notes"] == exported.notes
    config, _ = check_model_dir(tmp_path / "cnn", 1)
    assert list(config.input[0].dims) == [1, 4, 4] and config.max_batch_size == 8


def _config(max_batch: int):  # noqa: ANN202 - tiny helper
    from converters.triton_config import ConfigOptions

    return ConfigOptions(max_batch_size=max_batch)


def test_fixed_batch_cannot_be_made_dynamic(tmp_path: Path) -> None:
    before = tree_hash(tmp_path)
    with pytest.raises(ConversionError, match="cannot be made dynamic"):
        export_pytorch(tiny_torch.FixedBatch().eval(), [InputSpec("x", (-1, 4))], ["y"])
    assert tree_hash(tmp_path) == before


def test_cli_factory_with_weights_and_torchscript(tmp_path: Path) -> None:
    model = tiny_torch.trained_mlp()
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    repo = tmp_path / "repo"
    result = runner.invoke(
        app,
        [
            "pytorch",
            "tests.converters.tiny_torch:make_mlp",
            "--weights",
            str(weights),
            "--name",
            "mlp",
            "--repo",
            str(repo),
            "--input",
            "features:-1,6",
            "--output",
            "probabilities",
            "--max-batch-size",
            "16",
            "--instances",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    config, session = check_model_dir(repo / "mlp", 1)
    assert config.instance_group[0].count == 2
    x = np.random.default_rng(4).normal(size=(3, 6)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()  # the trained weights, not the factory's init
    np.testing.assert_allclose(
        run_session(session, {"features": x})["probabilities"], want, atol=1e-5
    )

    scripted = tmp_path / "mlp_ts.pt"
    torch.jit.script(model).save(str(scripted))
    result = runner.invoke(
        app,
        [
            "pytorch",
            str(scripted),
            "--name",
            "mlp",
            "--repo",
            str(repo),
            "--input",
            "features:-1,6",
            "--output",
            "probabilities",
            "--max-batch-size",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "TorchScript module" in result.output and "torchvision" not in result.output
    # version 2 keeps version 1's config: the unapplied --instances default is named, old -> new
    assert "--instances 2 -> 1" in result.output and "edit that config.pbtxt" in result.output
    config2, session2 = check_model_dir(repo / "mlp", 2)
    assert config2.instance_group[0].count == 2
    np.testing.assert_allclose(
        run_session(session2, {"features": x})["probabilities"], want, atol=1e-5
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing_file.pt"], "model file not found"),
        (["tests.converters.tiny_torch:nope"], "cannot import"),
        (
            ["tests.converters.tiny_torch:make_mlp", "--weights", "{garbage}"],
            "not a PyTorch state dict",
        ),
        (["{garbage}"], "is not a TorchScript model"),
    ],
)
def test_cli_bad_inputs_fail_cleanly(tmp_path: Path, args: list[str], message: str) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a model")
    repo = tmp_path / "repo"
    repo.mkdir()
    before = tree_hash(repo)
    args = [a.replace("{garbage}", str(garbage)) for a in args]
    result = runner.invoke(
        app, ["pytorch", *args, "--name", "m", "--repo", str(repo), "--input", "x:-1,6"]
    )
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert tree_hash(repo) == before


def test_torchscript_under_a_used_name_says_what_to_do(tmp_path: Path) -> None:
    """The signature check names both signatures and the ways out (a new --name, or remove)."""
    repo = tmp_path / "repo"
    convert(
        export_pytorch(tiny_torch.trained_mlp(), [InputSpec("input", (-1, 6))], ["p"]),
        PublishOptions(repo, "net"),
    )
    traced = tmp_path / "traced.pt"
    torch.jit.trace(tiny_torch.TinyCNN().eval(), torch.zeros(2, 1, 4, 4)).save(str(traced))
    before = tree_hash(repo)
    result = runner.invoke(
        app,
        ["pytorch", str(traced), "--name", "net", "--repo", str(repo), "--input", "input:-1,1,4,4"],
    )
    assert result.exit_code == 1
    assert "input 'input' = FP32 [6], but this model has FP32 [1, 4, 4]" in result.output
    assert "--name net_2" in result.output and f"remove {repo / 'net'}" in result.output
    assert tree_hash(repo) == before


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed"
)
def test_export_drops_torchvision_notices(tmp_path: Path) -> None:
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    records, level = _Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.WARNING)
    try:
        export_pytorch(tiny_torch.trained_mlp(), [InputSpec("x", (-1, 6))], ["p"])
        during_export = list(records.messages)
        model = tiny_torch.make_mlp().eval()
        torch.onnx.export(model, (torch.zeros(2, 6),), str(tmp_path / "raw.onnx"), dynamo=True)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    assert not [m for m in during_export if "torchvision" in m]
    # without the filter the exporter does log them: the assertion above is not vacuous
    assert any("torchvision is not installed" in m for m in records.messages)


class DataDependent(nn.Module):
    """Branches on a value: torch.export refuses it, the legacy tracer bakes the branch in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if bool(x.sum() > 0) else x


def test_dynamo_failure_is_one_clean_line() -> None:
    exported = export_pytorch(DataDependent().eval(), [InputSpec("x", (-1, 4))], ["y"])
    assert exported.exporter == "torch.onnx legacy"
    [note] = exported.notes
    assert note.startswith("dynamo exporter failed (") and note.endswith("used the legacy exporter")
    assert "\n" not in note and "Next steps" not in note and "step 1/3" not in note
    assert "data-dependent" in note  # the root cause, not torch's advice


class SmallVocabulary(nn.Module):
    """A 1,000-token vocabulary: sample ids from 1000 up would be out of range."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(1000, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(pooled)


def test_token_samples_stay_inside_the_vocabulary(tmp_path: Path) -> None:
    specs = [InputSpec(n, (-1, -1), "int64") for n in ("input_ids", "attention_mask")]
    exported = export_pytorch(SmallVocabulary().eval(), specs, ["logits"])
    assert index_limits(exported.model) == {"input_ids": 1000}
    row = convert(exported, PublishOptions(tmp_path, "small_vocab"))
    report = json.loads((tmp_path / "small_vocab" / "1" / "parity.json").read_text())
    assert report["passed"] and row["max_abs_err"] < 1e-4
    samples = make_samples(graph_inputs(exported.model), index_limits={"input_ids": 1000})
    assert samples["input_ids"].min() >= 0 and samples["input_ids"].max() < 1000
