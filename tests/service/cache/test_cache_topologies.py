"""Sentinel and Cluster URLs against real redis-server processes in those modes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio.cluster import RedisCluster

from service.cache import ResponseCache
from service.messages import InferRequest
from service.settings import Settings
from tests.helpers import free_port, start_process, wait_until
from tests.redis_server import REDIS_SERVER, SLOW_REDIS_S, RedisServer, free_cluster_port

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
        await cache.flush(SLOW_REDIS_S)
    assert len(calls) == 1
    return hits


def _start_sentinel(master_port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A sentinel watching ``master_port`` (it cannot bind port 0: a taken port is re-picked)."""
    port = [free_port()]
    log = workdir / "sentinel.log"

    def spawn() -> subprocess.Popen[bytes]:
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {port[0]}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor infer 127.0.0.1 {master_port} 1\n"
        )
        with log.open("wb") as out:
            return subprocess.Popen(
                [REDIS_SERVER, str(conf), "--sentinel"], stdout=out, stderr=subprocess.STDOUT
            )

    def knows_master(_: subprocess.Popen[bytes]) -> bool:
        command = ["redis-cli", "-p", str(port[0]), "sentinel", "get-master-addr-by-name", "infer"]
        return str(master_port) in subprocess.run(command, capture_output=True, text=True).stdout

    def new_port() -> None:
        port[0] = free_port()

    process = start_process(
        spawn,
        knows_master,
        lambda: log.read_text(errors="replace"),
        "the sentinel to know the master",
        new_ports=new_port,
    )
    return process, port[0]


@pytest.fixture
def sentinel(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    process, port = _start_sentinel(redis_server.port, tmp_path)
    try:
        yield port
    finally:
        process.kill()
        process.wait()


async def test_sentinel_url_finds_the_master(sentinel: int) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel}/infer"
    cache = ResponseCache(Settings(redis_url=url, cache_redis_timeout_ms=SLOW_REDIS_S * 1000))
    await cache.start()
    assert await _roundtrip(cache) == [False, True]
    await cache.close()


@pytest.fixture
def cluster() -> Iterator[list[RedisServer]]:
    nodes = [
        RedisServer(
            pick_port=free_cluster_port,
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
        command = ["redis-cli", "-p", str(nodes[0].port), "cluster", "info"]
        wait_until(
            lambda: (
                "cluster_state:ok" in subprocess.run(command, capture_output=True, text=True).stdout
            ),
            what="the cluster to report cluster_state:ok",
        )
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
    cache = ResponseCache(Settings(redis_url=url, cache_redis_timeout_ms=SLOW_REDIS_S * 1000))
    assert isinstance(cache.redis.client, RedisCluster)  # type: ignore[union-attr]
    await cache.start()
    assert await _roundtrip(cache) == [False, True]
    await cache.close()
