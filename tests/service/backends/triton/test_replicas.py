"""The replica pool's name resolution: one replica per address behind a (headless) name."""

from __future__ import annotations

import asyncio
import socket

from service.backends.triton.replicas import ReplicaPool


async def test_a_name_with_several_addresses_becomes_one_replica_each(monkeypatch):
    loop = asyncio.get_running_loop()
    answers = {"triton": ["10.0.0.7", "10.0.0.5"]}

    async def getaddrinfo(host, port, **_):
        if host not in answers:
            raise socket.gaierror(f"unknown host {host}")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    pool = ReplicaPool(["triton:8001", "127.0.0.1:9001"], "grpc", 1.0, 5.0)
    await pool.resolve()
    assert [r.url for r in pool.replicas] == ["10.0.0.5:8001", "10.0.0.7:8001", "127.0.0.1:9001"]
    first = pool.replicas[0]

    answers["triton"] = ["10.0.0.5", "10.0.0.9"]  # a pod left, another joined
    await pool.resolve()
    assert [r.url for r in pool.replicas] == ["10.0.0.5:8001", "10.0.0.9:8001", "127.0.0.1:9001"]
    assert pool.replicas[0] is first  # a replica that stays keeps its client and counters

    del answers["triton"]  # DNS hiccup: keep the last answer
    await pool.resolve()
    assert [r.url for r in pool.replicas] == ["10.0.0.5:8001", "10.0.0.9:8001", "127.0.0.1:9001"]
    await pool.close()


async def test_a_name_with_one_address_keeps_its_name():
    pool = ReplicaPool(["localhost:9"], "grpc", 1.0, 5.0)
    await pool.resolve()
    assert [r.url for r in pool.replicas] == ["localhost:9"]
    await pool.close()
