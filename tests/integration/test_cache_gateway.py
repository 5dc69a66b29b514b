"""The result cache end to end: real gateways, a real redis-server, tritonclient over HTTP/gRPC."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient

from tests.helpers import ROOT, Gateway, start_gateway, wait_until
from tests.redis_server import RedisServer

#: the minilm models set response_cache; digits_mlp does not
MODELS = ["minilm_embed", "minilm_embed_int8", "digits_mlp"]
RELIABLE = {"INFERGATE_CACHE_REDIS_TIMEOUT_MS": "60000"}  # a slow Redis call is no miss


@pytest.fixture(scope="module")
def cache_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of just the models these tests use (gateways start faster)."""
    from converters.examples import build_examples

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    build_examples(ROOT / "model_repo", only=MODELS)
    repo = tmp_path_factory.mktemp("cache_repo")
    for name in MODELS:
        (repo / name).symlink_to(ROOT / "model_repo" / name, target_is_directory=True)
    return repo


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def gw(cache_repo: Path, redis: RedisServer) -> Iterator[Gateway]:
    gateway = start_gateway(cache_repo, "--redis-url", redis.url, env=RELIABLE)
    yield gateway
    gateway.stop()


def sentence(seed: int, length: int = 10) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1000, 5000, size=(1, length)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }


def http_inputs(arrays: dict[str, np.ndarray], binary: bool, module: Any = httpclient) -> list:
    inputs = []
    for name, array in arrays.items():
        item = module.InferInput(name, list(array.shape), "INT64")
        item.set_data_from_numpy(array, binary_data=binary)
        inputs.append(item)
    return inputs


def embed(
    gateway: Gateway,
    arrays: dict[str, np.ndarray],
    binary: bool = True,
    model: str = "minilm_embed",
    **kw: Any,
) -> np.ndarray:
    """Ask version 1 (unless told otherwise)."""
    kw.setdefault("model_version", "1")
    with httpclient.InferenceServerClient(gateway.http_url) as client:
        result = client.infer(model, http_inputs(arrays, binary), **kw)
    return result.as_numpy("sentence_embedding")


def stats(gateway: Gateway, model: str = "minilm_embed", version: str = "1") -> dict[str, int]:
    body = httpx.get(f"{gateway.base_url}/v2/models/{model}/versions/{version}/stats").json()
    entry = body["model_stats"][0]
    inference = entry["inference_stats"]
    return {
        "hits": inference["cache_hit"]["count"],
        "misses": inference["cache_miss"]["count"],
        "hit_ns": inference["cache_hit"]["ns"],
        "executions": entry["execution_count"],
        "success": inference["success"]["count"],
    }


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in ("hits", "misses", "executions", "success")}


def test_json_binary_and_grpc_requests_share_one_entry(gw: Gateway) -> None:
    arrays = sentence(1)
    before = stats(gw)
    as_json = embed(gw, arrays, binary=False)
    as_binary = embed(gw, arrays, binary=True)
    with grpcclient.InferenceServerClient(gw.grpc_url) as client:
        inputs = []
        for name, array in arrays.items():
            item = grpcclient.InferInput(name, list(array.shape), "INT64")
            item.set_data_from_numpy(array)
            inputs.append(item)
        as_grpc = client.infer("minilm_embed", inputs, "1").as_numpy("sentence_embedding")
    assert as_json.shape == (1, 384)
    np.testing.assert_array_equal(as_binary, as_json)
    np.testing.assert_array_equal(as_grpc, as_json)
    after = stats(gw)
    assert delta(after, before) == {"hits": 2, "misses": 1, "executions": 1, "success": 3}
    assert after["hit_ns"] > before["hit_ns"]


def test_hit_answers_exactly_what_the_model_answered(gw: Gateway) -> None:
    arrays = sentence(2)
    computed = embed(gw, arrays, parameters={"cache": False})  # bypass: the model runs
    first = embed(gw, arrays)  # miss, stored
    second = embed(gw, arrays)  # hit
    np.testing.assert_allclose(first, computed, atol=1e-5)  # batching may reorder float sums
    np.testing.assert_array_equal(second, first)  # a hit is bit-for-bit what was stored


def test_cache_false_parameter_bypasses(gw: Gateway) -> None:
    arrays = sentence(3)
    embed(gw, arrays)
    before = stats(gw)
    embed(gw, arrays, parameters={"cache": False})
    assert delta(stats(gw), before) == {"hits": 0, "misses": 0, "executions": 1, "success": 1}


def test_models_never_share_entries(gw: Gateway) -> None:
    arrays = sentence(4)
    int8 = "minilm_embed_int8"
    exact_before, int8_before = stats(gw), stats(gw, int8)
    exact = embed(gw, arrays, model_version="1")
    quantized = embed(gw, arrays, model=int8)  # the same graph quantized: close, not equal
    assert not np.array_equal(exact, quantized)
    np.testing.assert_allclose(exact, quantized, atol=0.1)
    np.testing.assert_array_equal(embed(gw, arrays, model=int8), quantized)
    np.testing.assert_array_equal(embed(gw, arrays, model_version="1"), exact)
    for model, before in (("minilm_embed", exact_before), (int8, int8_before)):
        assert delta(stats(gw, model), before) == {
            "hits": 1,
            "misses": 1,
            "executions": 1,
            "success": 2,
        }


def test_model_without_response_cache_is_not_cached(gw: Gateway) -> None:
    x = np.random.default_rng(5).random((1, 64)).astype(np.float32) * 16
    item = httpclient.InferInput("input", [1, 64], "FP32")
    item.set_data_from_numpy(x)
    before = stats(gw, "digits_mlp")
    with httpclient.InferenceServerClient(gw.http_url) as client:
        for _ in range(3):
            client.infer("digits_mlp", [item])
    assert delta(stats(gw, "digits_mlp"), before) == {
        "hits": 0,
        "misses": 0,
        "executions": 3,
        "success": 3,
    }


def test_fifty_concurrent_identical_requests_execute_once(gw: Gateway) -> None:
    arrays = sentence(6, length=64)

    async def burst() -> list[np.ndarray]:
        async with aiohttpclient.InferenceServerClient(gw.http_url, conn_limit=64) as client:
            results = await asyncio.gather(
                *(
                    client.infer(
                        "minilm_embed", http_inputs(arrays, True, aiohttpclient), model_version="1"
                    )
                    for _ in range(50)
                )
            )
        return [r.as_numpy("sentence_embedding") for r in results]

    before = stats(gw)
    outputs = asyncio.run(burst())
    for output in outputs:
        np.testing.assert_array_equal(output, outputs[0])
    assert delta(stats(gw), before) == {"hits": 49, "misses": 1, "executions": 1, "success": 50}


def test_metrics_expose_triton_cache_families(gw: Gateway) -> None:
    embed(gw, sentence(7))
    embed(gw, sentence(7))
    text = httpx.get(f"{gw.base_url}/metrics").text
    for family in (
        "nv_cache_num_hits_per_model",
        "nv_cache_num_misses_per_model",
        "nv_cache_hit_duration_per_model",
        "nv_cache_miss_duration_per_model",
    ):
        samples = [
            line
            for line in text.splitlines()
            if line.startswith(family + "{") and 'model="minilm_embed' in line
        ]
        assert len(samples) == 2, (family, samples)  # each model exactly once
    assert "infergate_cache_breaker_open 0.0" in text


def test_two_gateways_share_hits_through_one_redis(
    gw: Gateway, cache_repo: Path, redis: RedisServer
) -> None:
    other = start_gateway(cache_repo, "--redis-url", redis.url, env=RELIABLE)
    try:
        arrays = sentence(8)
        stored = redis_keys(redis)
        first = embed(gw, arrays)
        # the write is fire-and-forget
        wait_until(lambda: redis_keys(redis) > stored, what="the entry to land in Redis")
        before = stats(other)
        second = embed(other, arrays)
        np.testing.assert_array_equal(second, first)
        assert delta(stats(other), before) == {
            "hits": 1,
            "misses": 0,
            "executions": 0,
            "success": 1,
        }
    finally:
        other.stop()


@pytest.mark.slow
def test_redis_killed_during_load_fails_no_request(cache_repo: Path) -> None:
    with RedisServer() as redis:
        gateway = start_gateway(
            cache_repo, "--redis-url", redis.url, env={"INFERGATE_CACHE_BREAKER_RESET_S": "0.2"}
        )
        try:
            _load_through_redis_outage(gateway, redis)
        finally:
            gateway.stop()


def _load_through_redis_outage(gateway: Gateway, redis: RedisServer) -> None:
    sentences = [sentence(100 + i) for i in range(12)]
    expected = [embed(gateway, s, parameters={"cache": False}) for s in sentences]
    failures: list[str] = []
    latencies: list[tuple[str, float]] = []
    phase = ["up"]
    done = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def worker(worker_id: int) -> None:
        with httpclient.InferenceServerClient(gateway.http_url) as client:
            i = worker_id
            while not stop.is_set():
                index = i % len(sentences)
                i += 3
                started = time.perf_counter()
                try:
                    result = client.infer(
                        "minilm_embed", http_inputs(sentences[index], True), model_version="1"
                    )
                    got = result.as_numpy("sentence_embedding")
                    if not np.allclose(got, expected[index], atol=1e-5):
                        failures.append(f"wrong answer for sentence {index}")
                except Exception as exc:  # any failure at all is what this test looks for
                    failures.append(repr(exc))
                with lock:
                    done[0] += 1
                    latencies.append((phase[0], time.perf_counter() - started))

    def wait_for(count: int) -> None:
        wait_until(lambda: done[0] >= count, what=f"{count} answers under load (have {done[0]})")

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(worker, n) for n in range(4)]
        wait_for(60)
        redis.kill()
        phase[0] = "down"
        killed_at = done[0]
        wait_for(killed_at + 150)
        down = done[0] - killed_at
        redis.start()
        phase[0] = "restarted"
        wait_for(done[0] + 60)
        stop.set()
        for future in futures:
            future.result()

    for name in ("up", "down", "restarted"):
        times = sorted(t for p, t in latencies if p == name)
        print(
            f"redis {name}: {len(times)} requests, p50 {1000 * times[len(times) // 2]:.1f} ms,"
            f" max {1000 * times[-1]:.1f} ms"
        )
    assert failures == [], failures[:5]
    assert down >= 150  # requests kept being answered while Redis was gone
    log = gateway.log()
    assert "serving without it" in log and "circuit open after" in log
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    errors = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("infergate_cache_errors_total{") and 'store="redis"' in line
    ]
    assert sum(errors) >= 1
    # Back on the restarted (empty) Redis: entries are written and hit again.
    arrays = sentence(999)

    def hits_again() -> bool:
        embed(gateway, arrays)
        before = stats(gateway)
        embed(gateway, arrays)
        return delta(stats(gateway), before)["hits"] == 1 and redis_keys(redis) > 0

    wait_until(hits_again, what="the gateway to use the restarted Redis again")


def redis_keys(redis: RedisServer) -> int:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    try:
        return len(client.keys("infergate:v1:minilm_embed:*"))
    finally:
        client.close()
