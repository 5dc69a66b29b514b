"""Fixtures for cache tests: real redis-server processes and misbehaving TCP servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.redis_server import RedisServer, redis_server, redis_server_factory

__all__ = ["RedisServer", "redis_server", "redis_server_factory"]


@pytest.fixture
async def junk_server() -> AsyncIterator[int]:
    """A TCP server that answers every request with bytes that are not RESP."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(4096):
                writer.write(b"\x00\xffHTTP/1.1 418 teapot\r\n\r\n?!garbage\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
