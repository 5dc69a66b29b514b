"""Triton's model_warmup: samples from config.pbtxt, run before the model turns READY.

The served-process test gates the warmup with a FIFO as its ``input_data_file``: the gateway's
warmup blocks reading it, so the test sees the model LOADING (not ready) for as long as it
wants, then writes the sample and sees it READY with the warmup logged and measured.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from service.backends.onnxruntime.warmup import TOKEN_WARMUP_LENGTH, warmup_samples
from service.dataplane.plane import DataPlane
from service.settings import Settings
from tests.helpers import start_gateway, wait_until

EMBED = """
name: "embed"
max_batch_size: 16
input { name: "input_ids" data_type: TYPE_INT64 dims: [-1] }
input { name: "mask" data_type: TYPE_INT64 dims: [-1] }
"""


def config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_default_warmup_is_one_max_size_batch_on_every_device(tmp_path) -> None:
    (sample,) = warmup_samples(config(EMBED), tmp_path)
    assert {name: a.shape for name, a in sample.inputs.items()} == {
        "input_ids": (16, 1),
        "mask": (16, 1),
    }
    assert sample.count == 1 and not sample.inputs["mask"].any() and sample.units == 16
    longer = (
        EMBED + 'parameters { key: "infergate.warmup_variable_dim" value: { string_value: "128" } }'
    )
    assert warmup_samples(config(longer), tmp_path)[0].inputs["mask"].shape == (16, 128)
    off = EMBED + 'parameters { key: "infergate.warmup" value: { string_value: "false" } }'
    assert warmup_samples(config(off), tmp_path) == []


def test_a_token_model_warms_up_on_realistic_sequences_counted_in_tokens(tmp_path) -> None:
    pad = 'parameters { key: "infergate.pad_inputs" value: { string_value: "input_ids" } }'
    padded = EMBED + pad
    (sample,) = warmup_samples(config(padded), tmp_path)
    rows = 16 * 32 // TOKEN_WARMUP_LENGTH  # the tokens of 16 rows of 32, in rows of 128
    assert TOKEN_WARMUP_LENGTH == 128 and rows == 4
    assert sample.inputs["input_ids"].shape == (rows, TOKEN_WARMUP_LENGTH)
    assert sample.inputs["mask"].shape == (rows, 1), "only padded inputs take the token length"
    assert sample.units == 16 * 32
    short = padded + (
        'parameters { key: "infergate.max_sequence_length" value: { string_value: "8" } }'
    )
    assert warmup_samples(config(short), tmp_path)[0].units == 16 * 8


def test_config_samples_zero_random_and_file(tmp_path) -> None:
    (tmp_path / "warmup").mkdir()
    np.arange(3, dtype=np.int64).tofile(tmp_path / "warmup" / "ids.bin")
    text = (
        EMBED
        + """
    model_warmup {
      name: "mixed" batch_size: 4 count: 2
      inputs { key: "input_ids"
               value: { data_type: TYPE_INT64 dims: [3] input_data_file: "ids.bin" } }
      inputs { key: "mask" value: { data_type: TYPE_INT64 dims: [3] random_data: true } }
    }
    """
    )
    (sample,) = warmup_samples(config(text), tmp_path)
    assert sample.name == "mixed" and sample.count == 2
    assert sample.inputs["input_ids"].tolist() == [[0, 1, 2]] * 4
    assert sample.inputs["mask"].shape == (4, 3) and sample.inputs["mask"].dtype == np.int64
    bad = text.replace("dims: [3] input_data_file", "dims: [5] input_data_file")
    with pytest.raises(ValueError, match=r"ids.bin holds 24 bytes, \(5,\) of INT64 needs 40"):
        warmup_samples(config(bad), tmp_path)


def warm_model(example_repo: Path, repo: Path, name: str, data_file: str) -> Path:
    """digits_mlp as ``name``, warmed up with a 2-row batch read from ``warmup/<data_file>``."""
    shutil.copytree(example_repo / "digits_mlp", repo / name)
    text = (repo / name / "config.pbtxt").read_text().replace('"digits_mlp"', f'"{name}"')
    text += (
        'model_warmup { name: "from_file" batch_size: 2 count: 3 inputs { key: "input" value: '
        f'{{ data_type: TYPE_FP32 dims: [64] input_data_file: "{data_file}" }} }} }}\n'
    )
    (repo / name / "config.pbtxt").write_text(text)
    (repo / name / "warmup").mkdir()
    return repo / name / "warmup" / data_file


async def test_a_failing_warmup_leaves_the_model_unavailable_with_the_reason(
    example_repo, tmp_path
):
    warm_model(example_repo, tmp_path, "short", "sample").write_bytes(b"\0" * 8)
    dataplane = DataPlane(Settings(model_repo=tmp_path, grpc_port=0))
    await dataplane.start()
    try:
        (row,) = await dataplane.repository_index()
        assert row.state == "UNAVAILABLE"
        assert "warmup failed: warmup file sample holds 8 bytes" in row.reason
    finally:
        await dataplane.close()


def test_served_model_is_loading_until_its_warmup_ran(example_repo, tmp_path):
    fifo = warm_model(example_repo, tmp_path, "warm", "sample")
    os.mkfifo(fifo)
    shutil.copytree(example_repo / "cancer_gbt", tmp_path / "cancer_gbt")
    gateway = start_gateway(
        tmp_path, "--model-control-mode", "explicit", "--load-model", "cancer_gbt"
    )
    try:
        url = gateway.base_url
        loaded: list[int] = []
        loader = threading.Thread(
            target=lambda: loaded.append(
                httpx.post(f"{url}/v2/repository/models/warm/load", timeout=120).status_code
            )
        )
        loader.start()

        def state() -> str:
            rows = httpx.post(f"{url}/v2/repository/index", timeout=10).json()
            return next(row["state"] for row in rows if row["name"] == "warm")

        wait_until(lambda: state() == "LOADING", 60, "the model to be LOADING during warmup")
        assert httpx.get(f"{url}/v2/models/warm/ready", timeout=10).status_code != 200
        with open(fifo, "wb") as sample:  # releases the warmup blocked reading the FIFO
            sample.write(np.ones(64, dtype=np.float32).tobytes())
        loader.join(120)
        assert loaded == [200]
        assert state() == "READY"
        assert httpx.get(f"{url}/v2/models/warm/ready", timeout=10).status_code == 200
        assert "warmup of warm version 1: sample 'from_file' x3 on 1 instance(s)" in gateway.log()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'infergate_warmup_seconds{model="warm",version="1"}' in metrics
        stats = httpx.get(f"{url}/v2/models/warm/stats", timeout=10).json()
        assert stats["model_stats"][0]["inference_count"] == 0  # warmup is not traffic
    finally:
        gateway.stop()
