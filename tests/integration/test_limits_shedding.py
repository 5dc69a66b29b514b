"""Shared rate limits across gateway processes, Redis dying under load, and shedding on overload.

Assertions are on statuses and headers, never on timings: the overload test sends waves until one
of them is shed (a wave is sure to queue work behind a running request sooner or later), and
checks every answer of every wave.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.security.keys import create_key
from service.security.policy import Principal
from tests.helpers import Gateway, edit_config, start_gateway, wait_until
from tests.redis_server import RedisServer, redis_server, redis_server_factory

__all__ = ["redis_server", "redis_server_factory"]

DIGITS_BODY = {
    "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]
}


def limited_gateway(repo: Path, keys: Path, redis: RedisServer) -> Gateway:
    return start_gateway(
        repo,
        env={
            "INFERGATE_API_KEYS_FILE": str(keys),
            "INFERGATE_REDIS_URL": redis.url,
            "INFERGATE_RATE_LIMIT_REDIS_TIMEOUT_MS": "5000",
            "INFERGATE_CACHE_ENABLED": "false",
        },
    )


def grpc_infer_call(gateway: Gateway, key: str) -> grpc.RpcError | None:
    """A raw ModelInfer (tritonclient hides trailers): None when it succeeded."""
    request = pb.ModelInferRequest(model_name="digits_mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend([1.0] * 64)
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, metadata=(("authorization", f"Bearer {key}"),)
            )
        except grpc.RpcError as error:
            return error
    return None


def test_two_gateways_share_one_redis_budget(
    example_repo: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    keys = tmp_path / "keys.json"
    # one request per 1000 s (a bucket of one): whoever spends it, the other replica sees it
    key = create_key(keys, "metered", ["infer"], requests_per_s=0.001)
    first = limited_gateway(example_repo, keys, redis_server)
    second = limited_gateway(example_repo, keys, redis_server)
    try:
        headers = {"authorization": f"Bearer {key}"}
        spent = httpx.post(f"{first.base_url}/v2/models/digits_mlp/infer", json=DIGITS_BODY,
                           headers=headers)  # fmt: skip
        assert spent.status_code == 200, spent.text
        limited = httpx.post(f"{second.base_url}/v2/models/digits_mlp/infer", json=DIGITS_BODY,
                             headers=headers)  # fmt: skip
        assert limited.status_code == 429, limited.text
        assert int(limited.headers["retry-after"]) > 900
        assert "rate limit of key 'metered'" in limited.json()["error"]
        error = grpc_infer_call(second, key)
        assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(error.trailing_metadata() or ())
        assert int(trailers["retry-after"]) > 900
        label = Principal("metered", frozenset()).label
        metrics = httpx.get(f"{second.base_url}/metrics").text
        assert f'infergate_rate_limited_total{{key="{label}"}} 2.0' in metrics
        assert "metered" not in metrics and key not in metrics
    finally:
        first.stop()
        second.stop()


def test_redis_killed_under_load_fails_open(
    example_repo: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    keys = tmp_path / "keys.json"
    key = create_key(keys, "busy", ["infer"], requests_per_s=100_000, rows_per_s=100_000)
    gateway = limited_gateway(example_repo, keys, redis_server)
    done: list[int] = []

    def infer(client: httpx.Client) -> int:
        response = client.post(
            "/v2/models/digits_mlp/infer",
            json=DIGITS_BODY,
            headers={"authorization": f"Bearer {key}"},
        )
        done.append(response.status_code)
        return response.status_code

    try:
        with (
            httpx.Client(base_url=gateway.base_url, timeout=60) as client,
            ThreadPoolExecutor(8) as pool,
        ):
            futures = [pool.submit(infer, client) for _ in range(240)]
            wait_until(lambda: len(done) >= 40, 120, "40 answers before Redis is killed")
            redis_server.kill()
            statuses = [future.result() for future in futures]
        assert statuses == [200] * 240, sorted(set(statuses))
        assert "rate limiter: Redis unreachable" in gateway.log()
    finally:
        gateway.stop()


@pytest.fixture
def one_row_minilm(example_repo: Path, tmp_path: Path) -> Iterator[Path]:
    """minilm_embed alone, one row per execution, no cache: the slowest path the repo has."""
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "minilm_embed", repo / "minilm_embed")

    def one_row(config: object) -> None:
        config.max_batch_size = 1  # type: ignore[attr-defined]
        del config.dynamic_batching.preferred_batch_size[:]  # type: ignore[attr-defined]
        config.response_cache.enable = False  # type: ignore[attr-defined]

    edit_config(repo / "minilm_embed" / "config.pbtxt", one_row)
    yield repo


def test_overload_is_shed_with_retry_after_and_accepted_requests_answer(
    one_row_minilm: Path,
) -> None:
    gateway = start_gateway(one_row_minilm, "--max-queue-wait-ms", "1")
    ids = np.random.default_rng(7).integers(1000, 5000, size=(1, 128)).tolist()
    body = {
        "inputs": [
            {"name": name, "shape": [1, 128], "datatype": "INT64", "data": data}
            for name, data in (
                ("input_ids", ids),
                ("attention_mask", [[1] * 128]),
                ("token_type_ids", [[0] * 128]),
            )
        ]
    }
    seen: dict[int, int] = {}

    def send(client: httpx.Client) -> httpx.Response:
        return client.post("/v2/models/minilm_embed/infer", json=body)

    def wave_shed_some() -> bool:
        with (
            httpx.Client(base_url=gateway.base_url, timeout=120) as client,
            ThreadPoolExecutor(24) as pool,
        ):
            responses = list(pool.map(lambda _: send(client), range(48)))
        for response in responses:
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if response.status_code == 200:
                (output,) = response.json()["outputs"]
                assert output["shape"] == [1, 384]
            else:
                assert response.status_code == 503, response.text
                assert int(response.headers["retry-after"]) >= 1
                assert "is overloaded: predicted stay" in response.json()["error"]
        return any(response.status_code == 503 for response in responses)

    try:
        wait_until(wave_shed_some, 300, f"a wave to be shed (statuses so far {seen})")
        assert seen.get(200, 0) > 0, seen
        metrics = httpx.get(f"{gateway.base_url}/metrics").text
        assert 'infergate_predicted_wait_seconds{model="minilm_embed"}' in metrics
        assert 'reason="predicted_wait"' in metrics
    finally:
        gateway.stop()
