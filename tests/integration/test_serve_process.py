"""`infergate serve` as users run it: flags or INFERGATE_* variables, and a graceful stop."""

from __future__ import annotations

import re
import shutil
import signal
import threading

import httpx
import pytest
from tritonclient.grpc import model_config_pb2

from tests.helpers import edit_config, start_gateway, wait_until

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


def test_every_setting_can_come_from_the_environment(example_repo):
    """Repository, host and ports as INFERGATE_* too (``via_env``): no flags at all."""
    env = {"INFERGATE_BATCHING": "false", "INFERGATE_LOG_JSON": "true"}
    server = start_gateway(example_repo, env=env, via_env=True)
    try:
        body = {
            "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [1.0] * 128}]
        }
        for _ in range(5):
            response = httpx.post(f"{server.base_url}/v2/models/digits_mlp/infer", json=body)
            assert response.status_code == 200
        stats = httpx.get(f"{server.base_url}/v2/models/digits_mlp/stats").json()
        # batching off: every request was its own execution
        assert stats["model_stats"][0]["execution_count"] == 5
    finally:
        assert server.stop(30) == 0
    assert '"level": "info"' in server.log()
    assert server.args == []


def arrivals(base_url: str) -> tuple[int, int]:
    """(pending, succeeded) requests of minilm_embed v1, from the gateway's metrics."""
    pattern = re.compile(
        r"nv_inference_(pending_request_count|request_success)"
        r'\{model="minilm_embed",version="1"\} (\d+)'
    )
    values = dict(pattern.findall(httpx.get(f"{base_url}/metrics").text))
    return int(values.get("pending_request_count", 0)), int(values.get("request_success", 0))


def one_at_a_time(config: model_config_pb2.ModelConfig) -> None:
    config.max_batch_size = 1
    del config.dynamic_batching.preferred_batch_size[:]  # Triton refuses sizes over the max


def send_all(url: str, count: int, statuses: list[int]) -> list[threading.Thread]:
    """``count`` requests at once from their own threads; each status lands in ``statuses``."""
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            response = http.post(url, json=EMBED)
            with lock:
                statuses.append(response.status_code)

    threads = [threading.Thread(target=client) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_finishes_queued_and_running_requests(example_repo, tmp_path, workers):
    """One request at a time (max_batch_size 1), so some are still queued when SIGTERM comes;
    with two workers, the workers answer what they hold before the executor stops.

    No timing: once every request of a round reached the gateway, some still pend (SIGTERM then)
    or all are done already (a fast machine: a round twice the size follows).
    """
    shutil.copytree(example_repo / "minilm_embed", tmp_path / "minilm_embed")
    edit_config(tmp_path / "minilm_embed" / "config.pbtxt", one_at_a_time)
    server = start_gateway(tmp_path, "--workers", workers, env={"INFERGATE_CACHE_ENABLED": "false"})
    url = f"{server.base_url}/v2/models/minilm_embed/infer"
    statuses: list[int] = []
    threads: list[threading.Thread] = []
    try:
        for count in (24, 48, 96, 192):
            threads += send_all(url, count, statuses)
            sent = len(threads)

            def all_arrived(sent: int = sent) -> tuple[int, int] | None:
                pending, done = arrivals(server.base_url)
                return (pending, done) if pending + done >= sent else None

            pending, _ = wait_until(all_arrived, what=f"{sent} requests to reach the gateway")
            if pending:
                break
        assert pending > 0, "every request finished before the signal: nothing was tested"
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(120)
        assert server.process.wait(30) == 0
        assert statuses == [200] * len(threads)
    finally:
        server.stop()
