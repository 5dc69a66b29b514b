"""``infergate serve --workers 2`` as real processes: a supervisor, an executor, two workers.

Faults are made deterministic by stopping the supervisor (SIGSTOP) while a child is killed: the
survivors' behaviour is then observed with nothing restarted yet, and SIGCONT lets the
supervisor replace what died.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.grpc import model_config_pb2

from tests.helpers import Gateway, edit_config, start_gateway, wait_until
from tests.integration.test_cache_gateway import delta, http_inputs, sentence, stats

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _dead(pid: int) -> bool:
    """Gone, or a zombie its (stopped) parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _executor(gateway: Gateway) -> int:
    found = re.findall(r"executor pid (\d+)|restarted as pid (\d+)", gateway.log())
    return int(next(p for p in found[-1] if p))


def _workers(gateway: Gateway) -> set[int]:
    return _children(gateway.process.pid) - {_executor(gateway)}


def _infer(gateway: Gateway, model: str = "digits_mlp") -> httpx.Response:
    """One request on a connection of its own (the kernel picks the worker per connection)."""
    with httpx.Client(timeout=30) as http:
        return http.post(f"{gateway.base_url}/v2/models/{model}/infer", json=BODY)


@contextmanager
def _under_load(gateway: Gateway, threads: int = 4) -> Iterator[list[str]]:
    """Clients sending requests back to back (keep-alive; a lost connection is reopened) until
    the block ends; yields their outcomes: status codes, or "transport" for a dropped
    connection. A request that hangs fails the test through its 30 s timeout."""
    outcomes: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post(
                        f"{gateway.base_url}/v2/models/digits_mlp/infer", json=BODY
                    )
                    outcomes.append(str(response.status_code))
                except httpx.TimeoutException:
                    outcomes.append("hung")
                except httpx.TransportError:
                    outcomes.append("transport")

    running = [threading.Thread(target=client) for _ in range(threads)]
    for thread in running:
        thread.start()
    try:
        wait_until(lambda: len(outcomes) >= 20, what="the load to start")
        yield outcomes
    finally:
        stop.set()
        for thread in running:
            thread.join(60)


@contextmanager
def _supervisor_stopped(gateway: Gateway) -> Iterator[None]:
    gateway.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        gateway.process.send_signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def two_workers(example_repo: Path) -> Iterator[Gateway]:
    server = start_gateway(example_repo, "--workers", "2")
    yield server
    server.stop()


def test_startup_logs_the_process_layout(two_workers: Gateway) -> None:
    assert "process layout: supervisor pid" in two_workers.log()
    assert len(_workers(two_workers)) == 2


def test_statistics_and_metrics_count_every_request_of_every_worker(two_workers: Gateway) -> None:
    def successes() -> int:
        stats = httpx.get(f"{two_workers.base_url}/v2/models/cancer_gbt/stats").json()
        return stats["model_stats"][0]["inference_stats"]["success"]["count"]

    before = successes()
    x = np.random.default_rng(0).random((1, 30), dtype=np.float32)
    for _ in range(20):  # fresh connections: the kernel spreads them over both workers
        with httpx.Client(timeout=30) as http:
            body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                "data": x.ravel().tolist()}]}  # fmt: skip
            http.post(f"{two_workers.base_url}/v2/models/cancer_gbt/infer", json=body)
    for _ in range(10):
        client = grpcclient.InferenceServerClient(two_workers.grpc_url)
        tensor = grpcclient.InferInput("input", [1, 30], "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("cancer_gbt", [tensor])
        client.close()
    answers = {successes() - before for _ in range(6)}  # whichever worker answers
    assert answers == {30}
    metrics = httpx.get(f"{two_workers.base_url}/metrics").text
    success = re.search(
        r'nv_inference_request_success\{model="cancer_gbt",version="1"\} (\d+)', metrics
    )
    latency = re.search(
        r'infergate_request_latency_seconds_count\{model="cancer_gbt"\} ([\d.]+)', metrics
    )
    assert success is not None and latency is not None
    assert int(success.group(1)) == before + 30
    assert float(latency.group(1)) == before + 30


def test_a_killed_worker_is_replaced_and_the_other_serves_meanwhile(two_workers: Gateway) -> None:
    victim, survivor = sorted(_workers(two_workers))
    with _under_load(two_workers) as outcomes:
        with _supervisor_stopped(two_workers):
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: _dead(victim), what="the kill")
            statuses = [_infer(two_workers).status_code for _ in range(10)]
            assert statuses == [200] * 10, "the surviving worker takes every new connection"
        replaced = re.compile(
            rf"worker-\d \(pid {victim}\) was killed by SIGKILL; replaced by pid (\d+)"
        )
        found = wait_until(
            lambda: replaced.search(two_workers.log()), what="the replacement's log line"
        )
        assert _workers(two_workers) == {survivor, int(found.group(1))}
        served = len(outcomes)
        wait_until(lambda: len(outcomes) > served + 20, what="the load to go on")
    assert set(outcomes) <= {"200", "transport"}, "only the killed worker's connections broke"
    assert [_infer(two_workers).status_code for _ in range(10)] == [200] * 10


def _counts(gateway: Gateway) -> tuple[int, int, float, float]:
    """digits_mlp's successes in /stats and in /metrics, its latency count (a worker's own
    histogram, summed), and when the counts began."""
    stats = httpx.get(f"{gateway.base_url}/v2/models/digits_mlp/stats", timeout=30).json()
    metrics = httpx.get(f"{gateway.base_url}/metrics", timeout=30).text

    def sample(pattern: str) -> float:
        found = re.search(pattern, metrics, re.MULTILINE)
        assert found is not None, pattern
        return float(found.group(1))

    return (
        stats["model_stats"][0]["inference_stats"]["success"]["count"],
        int(sample(r'nv_inference_request_success\{model="digits_mlp",version="1"\} (\d+)')),
        sample(r'infergate_request_latency_seconds_count\{model="digits_mlp"\} ([\d.]+)'),
        sample(r"^infergate_statistics_start_time_seconds (\S+)$"),
    )


def test_counts_never_go_back_when_a_worker_dies(two_workers: Gateway) -> None:
    for _ in range(20):  # fresh connections: both workers answer some
        assert _infer(two_workers).status_code == 200
    before = _counts(two_workers)
    assert before[0] == before[1] >= 20 and before[3] > 0
    victim = sorted(_workers(two_workers))[0]
    os.kill(victim, signal.SIGKILL)
    replaced = re.compile(rf"worker-\d \(pid {victim}\) was killed by SIGKILL; replaced by")
    wait_until(lambda: replaced.search(two_workers.log()), what="the replacement's log line")
    assert _counts(two_workers) == before, "the dead worker's counts stay in the sums"


def test_a_killed_executor_means_503_then_its_models_come_back(
    example_repo: Path, tmp_path: Path
) -> None:
    server = start_gateway(
        example_repo,
        "--workers", "2", "--model-control-mode", "explicit", "--load-model", "digits_mlp",
    )  # fmt: skip
    try:
        loaded = httpx.post(f"{server.base_url}/v2/repository/models/cancer_gbt/load", timeout=60)
        assert loaded.status_code == 200
        executor = _executor(server)
        began = _counts(server)[3]
        with _under_load(server) as outcomes, _supervisor_stopped(server):
            os.kill(executor, signal.SIGKILL)
            wait_until(lambda: _dead(executor), what="the kill")

            def refused() -> httpx.Response | None:
                response = _infer(server)
                return response if response.status_code == 503 else None

            response = wait_until(refused, what="503 from the workers")
            assert "executor process is restarting" in response.json()["error"]
            assert httpx.get(f"{server.base_url}/v2/health/ready").status_code == 503
            assert httpx.get(f"{server.base_url}/metrics").status_code == 200  # its own counts
            assert set(outcomes) <= {"200", "503"}, "in flight: answered or a precise 503"
        wait_until(lambda: _executor(server) != executor, what="a new executor")
        wait_until(
            lambda: httpx.get(f"{server.base_url}/v2/health/ready").status_code == 200,
            what=f"the models back READY ({server.log()[-1500:]})",
        )
        assert _infer(server).status_code == 200
        assert _counts(server)[3] > began, "the counts say they began again with the executor"
        ready = f"{server.base_url}/v2/models/cancer_gbt/ready"  # loaded by a call, restored
        assert [httpx.get(ready).status_code for _ in range(4)] == [200] * 4
    finally:
        server.stop()


def test_identical_requests_on_every_worker_execute_once(two_workers: Gateway) -> None:
    """Fifty at once over many connections (so over both workers), no Redis: the executor joins
    the copies in flight and keeps the result for those that come after."""
    arrays = sentence(16, length=64)

    async def burst() -> list[np.ndarray]:
        clients = [aiohttpclient.InferenceServerClient(two_workers.http_url) for _ in range(10)]
        try:
            results = await asyncio.gather(
                *(
                    clients[i % 10].infer(
                        "minilm_embed", http_inputs(arrays, True, aiohttpclient), model_version="1"
                    )
                    for i in range(50)
                )
            )
        finally:
            for client in clients:
                await client.close()
        return [r.as_numpy("sentence_embedding") for r in results]

    before = stats(two_workers)
    outputs = asyncio.run(burst())
    for output in outputs:
        np.testing.assert_array_equal(output, outputs[0])
    after = stats(two_workers)
    assert delta(after, before) == {"hits": 49, "misses": 1, "executions": 1, "success": 50}


def test_text_embeddings_through_a_worker(two_workers: Gateway) -> None:
    """The worker tokenizes (its own copy of the model's tokenizer), the executor runs."""
    client = openai.OpenAI(base_url=f"{two_workers.base_url}/v1", api_key="unused")
    for _ in range(4):  # new clients: both workers answer some
        answer = client.embeddings.create(model="minilm_embed", input=["a cat", "a dog"])
        assert [len(item.embedding) for item in answer.data] == [384, 384]
        assert answer.usage.prompt_tokens > 4


def test_the_connection_cap_counts_the_connections_of_every_worker(example_repo: Path) -> None:
    server = start_gateway(
        example_repo,
        "--workers", "2", "--max-connections", "8", "--http-read-timeout-s", "600",
    )  # fmt: skip
    idle: list[socket.socket] = []
    try:
        idle = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(12)]

        def refused() -> httpx.Response | None:
            answer = _infer(server)
            return answer if answer.status_code == 503 else None

        response = wait_until(refused, what="the cap to count both workers' connections")
        assert "more than 8 connections" in response.json()["error"]
        for sock in idle:
            sock.close()
        wait_until(lambda: _infer(server).status_code == 200, what="service after they closed")
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_two_executors_route_by_place_and_a_killed_one_leaves_the_other_serving(
    example_repo: Path, tmp_path: Path
) -> None:
    """``--executors auto`` over a CPU model and a model on GPU 0 (run on the CPU here): two
    executors; SIGKILL of the GPU model's one (supervisor stopped: nothing restarted yet)
    leaves the CPU model serving, and its successor brings the other back."""
    shutil.copytree(example_repo / "digits_mlp", tmp_path / "digits_mlp")
    shutil.copytree(example_repo / "digits_mlp", tmp_path / "digits_gpu")

    def on_gpu(config: model_config_pb2.ModelConfig) -> None:
        del config.instance_group[:]
        config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, gpus=[0])
        config.name = "digits_gpu"

    edit_config(tmp_path / "digits_gpu" / "config.pbtxt", on_gpu)
    server = start_gateway(tmp_path, "--workers", "2")
    try:
        layout = re.search(r"process layout: .*", server.log())
        assert layout is not None and "executor-1: cpu, executor-2: gpu:0" in layout.group(0)
        pids = [int(p) for p in re.findall(r"executor pid (\d+)", layout.group(0))]
        assert len(pids) == 2 and all(_infer(server, m).status_code == 200 for m in MODELS)
        with _supervisor_stopped(server):
            os.kill(pids[1], signal.SIGKILL)
            wait_until(lambda: _dead(pids[1]), what="the kill")
            wait_until(
                lambda: _infer(server, "digits_gpu").status_code == 503, what="503 for its model"
            )
            assert [_infer(server).status_code for _ in range(6)] == [200] * 6
        restarted = re.compile(rf"executor-2 \(pid {pids[1]}\) was killed by SIGKILL; restarted")
        wait_until(lambda: restarted.search(server.log()), what="executor-2's successor")
        wait_until(lambda: _infer(server, "digits_gpu").status_code == 200, what="its model back")
    finally:
        server.stop()


MODELS = ("digits_mlp", "digits_gpu")
