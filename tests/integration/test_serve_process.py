"""`infergate serve` as users run it: flags or INFERGATE_* variables, and a graceful stop."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx

from tests.helpers import ROOT, free_port, start_gateway

EMBED = {
    "inputs": [
        {
            "name": "input_ids",
            "shape": [1, 48],
            "datatype": "INT64",
            "data": [101] + [2000] * 46 + [102],
        },
        {"name": "attention_mask", "shape": [1, 48], "datatype": "INT64", "data": [1] * 48},
        {"name": "token_type_ids", "shape": [1, 48], "datatype": "INT64", "data": [0] * 48},
    ],
    "parameters": {"cache": False},
}


def test_every_setting_can_come_from_the_environment(example_repo, tmp_path):
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "INFERGATE_MODEL_REPO": str(example_repo),
        "INFERGATE_HOST": "127.0.0.1",
        "INFERGATE_HTTP_PORT": str(http_port),
        "INFERGATE_GRPC_PORT": str(grpc_port),
        "INFERGATE_BATCHING": "false",
        "INFERGATE_LOG_JSON": "true",
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = {
            "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [1.0] * 128}]
        }
        for _ in range(5):
            response = httpx.post(
                f"http://127.0.0.1:{http_port}/v2/models/digits_mlp/infer", json=body
            )
            assert response.status_code == 200
        stats = httpx.get(f"http://127.0.0.1:{http_port}/v2/models/digits_mlp/stats").json()
        # batching off: every request was its own execution
        assert stats["model_stats"][0]["execution_count"] == 5
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert '"level": "info"' in log.read_text()


def wait_until_all_arrived(base_url: str, count: int) -> None:
    """Until every request is queued, running or done inside the gateway, and some still pend."""
    pattern = re.compile(
        r"nv_inference_(pending_request_count|request_success)"
        r'\{model="minilm_embed",version="2"\} (\d+)'
    )
    for _ in range(600):
        values = dict(pattern.findall(httpx.get(f"{base_url}/metrics").text))
        pending, done = (
            int(values.get("pending_request_count", 0)),
            int(values.get("request_success", 0)),
        )
        if pending + done >= count:
            assert pending > 0, "every request finished before the signal: nothing was tested"
            return
        time.sleep(0.02)
    raise AssertionError("requests never reached the gateway")


def test_sigterm_finishes_queued_and_running_requests(example_repo, tmp_path):
    """One request at a time (max_batch_size 1), so some are still queued when SIGTERM comes."""
    shutil.copytree(example_repo / "minilm_embed", tmp_path / "minilm_embed")
    config = tmp_path / "minilm_embed" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 32", "max_batch_size: 1"))
    server = start_gateway(tmp_path, env={"INFERGATE_CACHE_ENABLED": "false"})
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            response = http.post(f"{server.base_url}/v2/models/minilm_embed/infer", json=EMBED)
            with lock:
                statuses.append(response.status_code)

    threads = [threading.Thread(target=client) for _ in range(24)]
    for thread in threads:
        thread.start()
    wait_until_all_arrived(server.base_url, 24)
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    assert server.process.wait(30) == 0
    assert statuses == [200] * 24
