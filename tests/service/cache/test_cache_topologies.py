"""Sentinel and Cluster URLs against real redis-server processes in those modes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio.cluster import RedisCluster

from service.cache import ResponseCache
from service.settings import Settings
from service.types import InferRequest
from tests.redis_server import REDIS_SERVER, RedisServer, free_cluster_port, free_port

pytestmark = pytest.mark.slow


async def _roundtrip(cache: ResponseCache) -> list[bool]:
    calls = []

    async def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"y": np.arange(3, dtype=np.int64)}

    x = np.ones(2, dtype=np.float32)
    key = cache.key("m", "1", InferRequest("m", "1", {"x": x}, {"x": "FP32"}), ["y"])
    hits = []
    for _ in range(2):
        outputs, hit = await cache.get_or_compute(key, "m", "1", compute)
        assert outputs["y"].tolist() == [0, 1, 2]
        hits.append(hit)
        await cache.flush()
    assert len(calls) == 1
    return hits


@pytest.fixture
def sentinel(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor infer 127.0.0.1 {redis_server.port} 1\n"
    )
    process = subprocess.Popen(
        [REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["redis-cli", "-p", str(port), "sentinel", "get-master-addr-by-name", "infer"],
                capture_output=True,
                text=True,
            ).stdout
            if str(redis_server.port) in out:
                break
            time.sleep(0.05)
        yield port
    finally:
        process.kill()
        process.wait()


async def test_sentinel_url_finds_the_master(sentinel: int) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel}/infer"
    cache = ResponseCache(Settings(redis_url=url, cache_redis_timeout_ms=1000))
    await cache.start()
    assert await _roundtrip(cache) == [False, True]
    await cache.close()


@pytest.fixture
def cluster() -> Iterator[list[RedisServer]]:
    nodes = [
        RedisServer(
            port=free_cluster_port(),
            extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
        )
        for _ in range(3)
    ]
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create"]
            + [f"127.0.0.1:{n.port}" for n in nodes]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = subprocess.run(
                ["redis-cli", "-p", str(nodes[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
            ).stdout
            if "cluster_state:ok" in info:
                break
            time.sleep(0.1)
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()


@pytest.mark.parametrize("style", ["scheme", "query"])
async def test_cluster_url(cluster: list[RedisServer], style: str) -> None:
    port = cluster[0].port
    url = (
        f"redis+cluster://127.0.0.1:{port}"
        if style == "scheme"
        else f"redis://127.0.0.1:{port}?cluster=true"
    )
    cache = ResponseCache(Settings(redis_url=url, cache_redis_timeout_ms=2000))
    assert isinstance(cache.redis.client, RedisCluster)  # type: ignore[union-attr]
    await cache.start()
    assert await _roundtrip(cache) == [False, True]
    await cache.close()
