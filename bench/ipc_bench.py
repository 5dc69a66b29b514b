"""The transport behind ``service/processes/ipc.py``, measured: round trips between two processes.

A client process sends a request carrying one float32 tensor of 256 B, 3 KB or 96 KB to an echo
process that answers with a tensor of the same size, one request in flight at a time, and times
each round trip (``--count`` of them after ``--warmup``). Every transport carries the same
message, ``(tag, call id, kind, (model, version, {"input": array}, outputs))``:

- ``a_socket``: a Unix stream socket framed by ``service.processes.ipc.encode``/``decode`` (pickle 5
with
  the tensor bytes out of band, one vectored ``sendmsg`` per frame), blocking sockets on both
  ends; the reference the ratios divide by;
- ``a_channel``: the same frames through ``service.processes.ipc.Channel`` on uvloop (``call`` in
the
  client, a handler answering in the echo process): the gateway's real path, event loop included;
- ``b_zmq``: pyzmq PAIR over ``ipc://``, ``send_multipart`` of the out-of-band pickle and the
  raw buffers (zero-copy frames on both ends);
- ``c_shm``: a ``multiprocessing.shared_memory`` ring per direction: the tensor bytes are
  copied into the next slot and only the pickle plus (offset, size) travel over a Unix socket;
  the receiver's array is a view on the slot (valid until the ring comes round again).

All four pickle with ``service.processes.ipc.encode``'s pickler (arrays as dtype, shape and an
out-of-band buffer) and unpickle with ``pickle.loads(..., buffers=...)``, so only the transport
differs.

Each transport runs ``--rounds`` times, interleaved with the others; the report keeps the median
of each figure over the rounds. Writes ``bench/results/ipc_bench.json`` and prints the table
(µs per round trip, median and p99, round trips/s and MB/s from the mean, ratio to ``a_socket``).

    .venv/bin/python bench/ipc_bench.py [--count 5000] [--rounds 3] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import pickle
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
import zmq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.processes import ipc  # noqa: E402

SIZES = {"256B": 256, "3KB": 3 * 1024, "96KB": 96 * 1024}
TRANSPORTS = ("a_socket", "a_channel", "b_zmq", "c_shm")
SLOTS, SLOT_BYTES = 8, 128 * 1024  # the shared-memory ring: 8 slots of 128 KB per direction
_LENGTH = struct.Struct("<I")
Message = tuple[int, int, str, object]


def request(nbytes: int, call_id: int = 1) -> Message:
    """A call as a front-end worker sends it: model, version, inputs, outputs wanted."""
    array = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32).reshape(1, -1)
    return (0, call_id, "infer", ("digits_mlp", "1", {"input": array}, ["probabilities"]))


def reply(message: Message) -> Message:
    """The echo process's answer: a tensor of the same size back, by the same call id."""
    _, call_id, _, payload = message
    _, _, inputs, _ = payload  # type: ignore[misc]
    return (1, call_id, "", {"probabilities": inputs["input"]})


# --- framed Unix sockets (a_socket, and the control messages of c_shm) ---------------------------


def send_pieces(sock: socket.socket, pieces: list[bytes | memoryview]) -> None:
    """One vectored write (``sendmsg``), continued if the kernel took only part of it."""
    views = [memoryview(piece).cast("B") for piece in pieces]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= views[0].nbytes:
            sent -= views[0].nbytes
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def recv_exact(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = sock.recv_into(view[got:])
        if not count:
            raise EOFError
        got += count
    return buffer


def recv_frame(sock: socket.socket) -> bytearray:
    (size,) = _LENGTH.unpack(recv_exact(sock, 4))
    return recv_exact(sock, size)


def serve_socket(server: socket.socket) -> None:
    """a_socket's echo end: decode, answer, encode, until the client hangs up."""
    conn, _ = server.accept()
    try:
        while True:
            send_pieces(conn, ipc.encode(reply(ipc.decode(recv_frame(conn)))))  # type: ignore[arg-type]
    except (EOFError, ConnectionError):
        conn.close()


class SocketClient:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)

    def call(self, message: Message) -> object:
        send_pieces(self.sock, ipc.encode(message))
        return ipc.decode(recv_frame(self.sock))

    def close(self) -> None:
        self.sock.close()


# --- service.processes.ipc.Channel on uvloop (a_channel)
# ---------------------------------------------------


def serve_channel(server: socket.socket) -> None:
    """a_channel's echo end: a Channel whose handler answers each call with the reply payload."""

    def handler(kind: str, payload: object, channel: ipc.Channel, call_id: int) -> object:
        return reply((0, call_id, kind, payload))[3]

    async def main() -> None:
        lost = asyncio.get_running_loop().create_future()

        def on_lost(channel: ipc.Channel) -> None:
            if not lost.done():
                lost.set_result(None)

        loop = asyncio.get_running_loop()
        listener = await loop.create_unix_server(lambda: ipc.Channel(handler, on_lost), sock=server)
        await lost
        listener.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def channel_timings(path: str, message: Message, count: int, warmup: int) -> list[float]:
    """Round trips through ``Channel.call`` on uvloop, µs each (the warm-up ones dropped)."""
    _, _, kind, payload = message

    async def main() -> list[float]:
        channel = await ipc.connect(path, lambda *args: None, lambda channel: None)
        times = []
        for _ in range(warmup + count):
            started = time.perf_counter_ns()
            await channel.call(kind, payload)
            times.append((time.perf_counter_ns() - started) / 1000)
        channel.close()
        await channel.closed
        return times[warmup:]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


# --- pyzmq PAIR over ipc:// (b_zmq) --------------------------------------------------------------


def pickled(message: object) -> tuple[bytes | memoryview, list[bytes | memoryview]]:
    """The pickle and the out-of-band buffers exactly as ``service.processes.ipc.encode`` makes them
    (its frame is header, buffer lengths, pickle, buffers), so only the transport differs."""
    pieces = ipc.encode(message)
    return pieces[2], pieces[3:]


def zmq_send(sock: zmq.Socket[Any], message: object) -> None:
    body, buffers = pickled(message)
    sock.send_multipart([body, *buffers], copy=False)


def zmq_recv(sock: zmq.Socket[Any]) -> object:
    frames = sock.recv_multipart(copy=False)
    if len(frames) == 1 and not frames[0].buffer.nbytes:
        return None  # the client is done
    return pickle.loads(frames[0].buffer, buffers=[frame.buffer for frame in frames[1:]])


def serve_zmq(address: str) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.PAIR)
    sock.bind(address)
    while (message := zmq_recv(sock)) is not None:
        zmq_send(sock, reply(message))  # type: ignore[arg-type]
    sock.close(linger=0)
    context.term()


class ZmqClient:
    def __init__(self, address: str) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.PAIR)
        self.sock.connect(address)

    def call(self, message: Message) -> object:
        zmq_send(self.sock, message)
        return zmq_recv(self.sock)

    def close(self) -> None:
        self.sock.send(b"")
        self.sock.close(linger=1000)
        self.context.term()


# --- a shared-memory ring per direction, control messages over a Unix socket (c_shm) -------------


class Ring:
    """SLOTS slots of SLOT_BYTES; a message's buffers are copied into the next slot in turn."""

    def __init__(self, memory: SharedMemory) -> None:
        self.memory = memory
        self.next = 0

    def put(self, message: object) -> bytes:
        """Copy the tensor bytes into a slot; return the control message that points at them."""
        body, buffers = pickled(message)
        offset = self.next * SLOT_BYTES
        self.next = (self.next + 1) % SLOTS
        refs = []
        for buffer in buffers:
            raw = memoryview(buffer).cast("B")
            assert offset + raw.nbytes <= (offset // SLOT_BYTES + 1) * SLOT_BYTES, "slot too small"
            self.memory.buf[offset : offset + raw.nbytes] = raw
            refs.append((offset, raw.nbytes))
            offset += raw.nbytes
        return pickle.dumps((bytes(body), refs), protocol=5)

    def get(self, control: bytes | bytearray) -> object:
        """The message, its arrays views on the slot (no copy)."""
        body, refs = pickle.loads(control)
        buf = self.memory.buf
        return pickle.loads(body, buffers=[buf[offset : offset + size] for offset, size in refs])


def send_control(sock: socket.socket, control: bytes) -> None:
    send_pieces(sock, [_LENGTH.pack(len(control)), control])


def serve_shm(server: socket.socket, requests: SharedMemory, replies: SharedMemory) -> None:
    conn, _ = server.accept()
    incoming, outgoing = Ring(requests), Ring(replies)
    try:
        while True:
            message = incoming.get(recv_frame(conn))
            send_control(conn, outgoing.put(reply(message)))  # type: ignore[arg-type]
    except (EOFError, ConnectionError):
        conn.close()


class ShmClient:
    def __init__(self, path: str, requests: SharedMemory, replies: SharedMemory) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.outgoing, self.incoming = Ring(requests), Ring(replies)

    def call(self, message: Message) -> object:
        send_control(self.sock, self.outgoing.put(message))
        return self.incoming.get(recv_frame(self.sock))

    def close(self) -> None:
        self.sock.close()


# --- the run -------------------------------------------------------------------------------------


def listener(path: str) -> socket.socket:
    """Bound and listening before the echo process forks, so the client can connect at once."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    return server


def timings(
    call: Callable[[Message], object], message: Message, count: int, warmup: int
) -> list[float]:
    times = []
    for _ in range(warmup + count):
        started = time.perf_counter_ns()
        call(message)
        times.append((time.perf_counter_ns() - started) / 1000)
    return times[warmup:]


def measure(transport: str, nbytes: int, count: int, warmup: int) -> list[float]:
    """A fresh echo process for one transport and size; µs per round trip."""
    message = request(nbytes)
    fork = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="ipc-bench-") as tmp:
        path, memories = os.path.join(tmp, "echo.sock"), []
        if transport == "b_zmq":
            address = f"ipc://{tmp}/zmq"
            echo = fork.Process(target=serve_zmq, args=(address,))
        else:
            server = listener(path)
            if transport == "c_shm":
                memories = [SharedMemory(create=True, size=SLOTS * SLOT_BYTES) for _ in range(2)]
            target = {"a_socket": serve_socket, "a_channel": serve_channel, "c_shm": serve_shm}
            echo = fork.Process(target=target[transport], args=(server, *memories))
        echo.start()
        if transport != "b_zmq":
            server.close()  # the echo process has its own copy of the listening socket
        try:
            if transport == "a_channel":
                return channel_timings(path, message, count, warmup)
            client: SocketClient | ZmqClient | ShmClient
            if transport == "a_socket":
                client = SocketClient(path)
            elif transport == "b_zmq":
                client = ZmqClient(address)
            else:
                client = ShmClient(path, *memories)
            try:
                return timings(client.call, message, count, warmup)
            finally:
                client.close()
        finally:
            echo.join(10)
            if echo.is_alive():
                echo.terminate()
                echo.join()
            release(memories)


def release(memories: list[SharedMemory]) -> None:
    """Close and unlink the rings once no array views on them are left."""
    import gc

    gc.collect()
    for memory in memories:
        memory.close()
        memory.unlink()


def summary(times: list[float], nbytes: int) -> dict[str, float]:
    mean = statistics.fmean(times)
    per_second = 1e6 / mean
    return {
        "median_us": round(statistics.median(times), 2),
        "p99_us": round(statistics.quantiles(times, n=100)[98], 2),
        "mean_us": round(mean, 2),
        "round_trips_per_s": round(per_second),
        "mb_per_s": round(2 * nbytes * per_second / 1e6, 1),  # request + reply bytes
    }


def run_all(count: int, warmup: int, rounds: int) -> dict[str, Any]:
    """Rounds interleave the transports; each figure is the median over the rounds."""
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    for round_number in range(rounds):
        for size, nbytes in SIZES.items():
            for transport in TRANSPORTS:
                print(f"round {round_number + 1}/{rounds}: {transport} {size}", flush=True)
                times = measure(transport, nbytes, count, warmup)
                runs.setdefault(size, {}).setdefault(transport, []).append(summary(times, nbytes))
    results: dict[str, Any] = {}
    for size, by_transport in runs.items():
        results[size] = {}
        for transport, rows in by_transport.items():
            medians = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
            results[size][transport] = {**medians, "rounds": rows}
        base = results[size]["a_socket"]
        for row in results[size].values():
            row["median_vs_a_socket"] = round(row["median_us"] / base["median_us"], 3)
            row["p99_vs_a_socket"] = round(row["p99_us"] / base["p99_us"], 3)
    return results


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"round trips between two processes, one in flight, {report['count']} after "
        f"{report['warmup']} warm-up, median of {report['rounds']} round(s)"
    )
    for header in ("tensor", "transport", "median µs", "p99 µs", "round trips/s", "MB/s",
                   "median vs a", "p99 vs a"):  # fmt: skip
        table.add_column(header, justify="left" if header in ("tensor", "transport") else "right")
    for size, by_transport in report["results"].items():
        for transport, row in by_transport.items():
            table.add_row(
                size,
                transport,
                f"{row['median_us']:.1f}",
                f"{row['p99_us']:.1f}",
                f"{row['round_trips_per_s']:.0f}",
                f"{row['mb_per_s']:.1f}",
                f"{row['median_vs_a_socket']:.2f}x",
                f"{row['p99_vs_a_socket']:.2f}x",
            )
    Console(width=120).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="timed round trips per case")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 round trips, one round")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ipc_bench.json")
    args = parser.parse_args()
    count, warmup, rounds = (1000, 200, 1) if args.quick else (args.count, args.warmup, args.rounds)
    report = {
        "machine": {"cores": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "versions": {
            "python": sys.version.split()[0],
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
            "uvloop": uvloop.__version__,
        },  # fmt: skip
        "count": count,
        "warmup": warmup,
        "rounds": rounds,
        "slots": {"count": SLOTS, "bytes": SLOT_BYTES},
        "results": run_all(count, warmup, rounds),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
