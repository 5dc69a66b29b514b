"""`infergate serve` as users run it: flags or INFERGATE_* variables, and a graceful stop."""

from __future__ import annotations

import shutil
import signal

import httpx
import pytest
from tritonclient.grpc import model_config_pb2

from tests.helpers import edit_config, start_gateway
from tests.in_flight import hold_in_flight


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


def one_at_a_time(config: model_config_pb2.ModelConfig) -> None:
    config.max_batch_size = 1
    del config.dynamic_batching.preferred_batch_size[:]  # Triton refuses sizes over the max


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
    try:
        threads, statuses = hold_in_flight(server.base_url)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(120)
        assert server.process.wait(30) == 0
        assert statuses == [200] * len(threads)
    finally:
        server.stop()
