"""``--device cpu|gpu|auto`` and ``--gpus``: the instance_group kind the converters write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from converters.cli import app
from converters.cli_flags import parse_gpus
from converters.errors import ConversionError
from converters.signature import TensorSpec
from converters.triton_config import ConfigOptions, build_config, parse, render
from service.host import cuda_gpu_count
from tests.converters.onnx_graphs import linear

INPUTS = [TensorSpec("x", np.dtype(np.float32), (-1, 4), TensorProto.FLOAT)]
OUTPUTS = [TensorSpec("y", np.dtype(np.float32), (-1, 2), TensorProto.FLOAT)]


def groups(options: ConfigOptions) -> list[tuple[int, int, list[int]]]:
    config = parse(render(build_config("m", INPUTS, OUTPUTS, options)))  # what Triton reads
    return [(g.kind, g.count, list(g.gpus)) for g in config.instance_group]


def test_device_gpu_writes_kind_gpu_with_the_listed_gpus() -> None:
    assert groups(ConfigOptions(instances=2, device="gpu", gpus=[0, 1])) == [
        (mc.ModelInstanceGroup.KIND_GPU, 2, [0, 1])
    ]
    assert groups(ConfigOptions(device="gpu")) == [(mc.ModelInstanceGroup.KIND_GPU, 1, [])]
    assert groups(ConfigOptions()) == [(mc.ModelInstanceGroup.KIND_CPU, 1, [])]


def test_device_auto_follows_the_cuda_driver() -> None:
    expected = (
        mc.ModelInstanceGroup.KIND_GPU if cuda_gpu_count() else mc.ModelInstanceGroup.KIND_CPU
    )
    assert groups(ConfigOptions(device="auto"))[0][0] == expected


@pytest.mark.parametrize(
    "options, message",
    [
        (ConfigOptions(device="tpu"), "--device must be cpu, gpu or auto, not 'tpu'"),
        (ConfigOptions(device="cpu", gpus=[0]), r"--gpus \[0\] needs --device gpu"),
    ],
)
def test_bad_device_options_are_refused(options: ConfigOptions, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        build_config("m", INPUTS, OUTPUTS, options)


def test_gpus_parsing() -> None:
    assert parse_gpus("0, 1") == [0, 1] and parse_gpus(None) == []
    with pytest.raises(ConversionError, match="comma-separated device ids"):
        parse_gpus("0;1")


@pytest.mark.parametrize("command", ["onnx", "tensorrt-flags"])
def test_every_export_command_takes_device_and_gpus(tmp_path: Path, command: str) -> None:
    """Through the real ``infergate convert onnx`` (and the flag group TensorRT shares)."""
    if command == "tensorrt-flags":
        result = CliRunner().invoke(app, ["tensorrt", "--help"])
        assert "--device" in result.output and "--gpus" in result.output
        return
    model = linear(tmp_path / "linear.onnx")
    args = ["onnx", str(model), "--name", "lin", "--repo", str(tmp_path / "repo")]
    result = CliRunner().invoke(app, [*args, "--device", "gpu", "--gpus", "1"])
    assert result.exit_code == 0, result.output
    config = parse((tmp_path / "repo" / "lin" / "config.pbtxt").read_text())
    assert [(g.kind, list(g.gpus)) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, [1])
    ]
