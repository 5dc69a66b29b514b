"""``infergate serve --workers 2 --model-control-mode on_demand --model-memory-budget 64MiB`` as
real processes: the flags as the issue spells them, models listed unloaded over REST, loaded by
their first request through either worker (REST and gRPC), evicted under the budget, and the
figures in the index and in /metrics (summed over every process)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from service.models.ondemand import NEVER_LOADED
from tests.helpers import start_gateway
from tests.service.models.ondemand_support import WIDTH, weight_model

BUDGET = 64 << 20


def _body(value: float) -> dict[str, object]:
    return {
        "inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": [value] * WIDTH}]
    }


def _index(base: str) -> dict[str, dict[str, str]]:
    rows = httpx.post(f"{base}/v2/repository/index", timeout=30).json()
    return {row["name"]: row for row in rows}


def _resident(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    return {
        sample.labels["model"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "infergate_model_resident_bytes"
        for sample in family.samples
    }


def test_on_demand_with_workers_lists_loads_and_evicts(tmp_path: Path) -> None:
    for i in range(5):
        weight_model(tmp_path, f"w{i}", seed=i)
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    (tmp_path / "broken" / "config.pbtxt").write_text("max_batch_size: 4\n")
    server = start_gateway(
        tmp_path,
        *("--workers", "2", "--model-control-mode", "on_demand"),
        *("--model-memory-budget", "64MiB"),
        env={"INFERGATE_MODEL_MEMORY_BUDGET": "1"},  # the flag wins over the variable
    )
    base = server.base_url
    try:
        assert {row["reason"] for row in _index(base).values()} == {NEVER_LOADED}
        assert httpx.get(f"{base}/v2/models/w0/ready").status_code == 400
        answers = {}
        for step, i in enumerate([0, 1, 2, 3, 4, 0, 1]):
            with httpx.Client(timeout=60) as http:  # a connection each: either worker
                response = http.post(f"{base}/v2/models/w{i}/infer", json=_body(1.0))
            assert response.status_code == 200, response.text
            answers.setdefault(i, response.json()["outputs"][0]["data"])
            assert response.json()["outputs"][0]["data"] == answers[i], f"step {step}"
            assert sum(_resident(base).values()) <= BUDGET
        rows = _index(base)
        assert rows["w1"]["state"] == "READY" and rows["w1"]["reason"].startswith("resident: ")
        assert any("evicted to make room" in row["reason"] for row in rows.values())
        client = grpcclient.InferenceServerClient(server.grpc_url)
        x = grpcclient.InferInput("x", [1, WIDTH], "FP32")
        x.set_data_from_numpy(np.full((1, WIDTH), 1.0, dtype=np.float32))
        result = client.infer("w3", [x]).as_numpy("y")
        assert result is not None
        np.testing.assert_array_equal(result[0], np.array(answers[3], dtype=np.float32))
        client.close()
        refused = httpx.post(f"{base}/v2/models/broken/infer", json=_body(1.0), timeout=60)
        assert refused.status_code == 503
        assert "failed to load: ONNX Runtime cannot load model.onnx" in refused.json()["error"]
        assert _index(base)["broken"]["state"] == "UNAVAILABLE"
    finally:
        server.stop()
