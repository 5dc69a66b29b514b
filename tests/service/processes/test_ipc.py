"""The worker <-> executor channel: frames, out-of-band tensors, calls, errors, lost peers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.errors import Overloaded, Unavailable
from service.processes.ipc import Channel, connect, decode, encode, listen
from tests.helpers import wait_until_async


def _frame(message: object) -> bytearray:
    """What the reader sees of one frame: everything after its 4-byte length."""
    return bytearray(b"".join(bytes(piece) for piece in encode(message))[4:])


def test_arrays_travel_out_of_band_and_come_back_writable() -> None:
    big = np.arange(50_000, dtype=np.float32).reshape(500, 100)
    texts = np.array([b"a", b"bc"], dtype=np.object_)
    pieces = encode({"x": big, "t": texts})
    body = pieces[2]
    assert len(body) < 2_000, "the tensor bytes must not be inside the pickle"
    assert any(memoryview(piece).nbytes == big.nbytes for piece in pieces[3:])
    back = decode(_frame({"x": big, "t": texts}))
    np.testing.assert_array_equal(back["x"], big)  # type: ignore[index]
    assert back["x"].dtype == np.float32 and back["x"].flags.writeable  # type: ignore[index]
    assert back["t"].tolist() == [b"a", b"bc"]  # type: ignore[index]


def _short(tmp_path: Path) -> str:
    return str(tmp_path / "s.sock")


async def test_calls_replies_errors_and_a_future_answered_later(tmp_path: Path) -> None:
    later: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    def handle(kind: str, payload: object, channel: Channel, call_id: int) -> object:
        if kind == "echo":
            return payload
        if kind == "later":
            return later
        if kind == "full":
            raise Overloaded("queue is full", retry_after_s=3)
        raise ValueError(kind)

    server = await listen(_short(tmp_path), handle, lambda _: None, lambda _: None)
    client = await connect(_short(tmp_path), handle, lambda _: None)
    try:
        array = np.ones((3, 4), dtype=np.int64)
        echoed = await client.call("echo", ("hi", array))
        assert echoed[0] == "hi"  # type: ignore[index]
        np.testing.assert_array_equal(echoed[1], array)  # type: ignore[index]
        pending = client.call("later", None)
        await asyncio.sleep(0)
        assert not pending.done()
        later.set_result(42)
        assert await pending == 42
        with pytest.raises(Overloaded) as refused:
            await client.call("full", None)
        assert refused.value.retry_after_s == 3 and refused.value.message == "queue is full"
        with pytest.raises(Exception, match="internal error: unknown"):
            await client.call("unknown", None)
    finally:
        client.close()
        server.close()


async def test_calls_in_flight_fail_with_503_when_the_peer_goes_away(tmp_path: Path) -> None:
    never: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    peers: list[Channel] = []
    server = await listen(_short(tmp_path), lambda *_: never, peers.append, lambda _: None)
    client = await connect(_short(tmp_path), lambda *_: None, lambda _: None)
    pending = client.call("wait", None)
    await wait_until_async(lambda: bool(peers), what="the server to accept the connection")
    peers[0].close()
    with pytest.raises(Unavailable) as lost:
        await pending
    assert lost.value.retry_after_s == 1
    await client.closed
    with pytest.raises(Unavailable):
        await client.call("after", None)
    server.close()


@pytest.mark.parametrize(
    "array",
    [
        np.array([[True, False]]),
        np.arange(6, dtype=np.float16).reshape(2, 3),
        np.array([b"x", b"", b"yz"], dtype=np.object_),
        np.zeros((0, 3), np.int64),
        np.arange(12).reshape(3, 4)[:, ::2],  # not contiguous: pickled by numpy itself
    ],
    ids=["BOOL", "FP16", "BYTES", "empty", "strided"],
)
def test_every_kind_of_tensor_comes_back_equal(array: np.ndarray) -> None:
    back = decode(_frame(array))
    assert isinstance(back, np.ndarray)
    assert (back.dtype, back.shape) == (array.dtype, array.shape)
    np.testing.assert_array_equal(back, array)
