"""Overload with and without shedding by predicted wait, side by side (not a test).

The pattern from the security/admission issue: N clients at once, twice (each client's 2
requests), each request 8 x 128 MiniLM tokens (version 1, result cache off), against
``infergate serve`` with the default budget (``INFERGATE_MAX_QUEUE_WAIT_MS`` 5000) and with
shedding off (0), from a cold start (the burst is the first traffic) and warm (a few requests
first), with ``--workers 1`` and ``2``. Reports statuses, refusals without Retry-After, the
rejection reasons, accepted p50/p99, how fast rejects were answered, accepted throughput (and
its ratio to shedding off) and the RSS of the gateway's process tree.

    .venv/bin/python bench/overload_bench.py [--clients 300] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import selectors
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import start_gateway  # noqa: E402


def body(rows: int = 8, tokens: int = 128) -> bytes:
    ids = np.random.default_rng(0).integers(1000, 5000, size=(rows, tokens)).tolist()
    ones = [[1] * tokens for _ in range(rows)]
    zeros = [[0] * tokens for _ in range(rows)]
    inputs = [
        {"name": name, "shape": [rows, tokens], "datatype": "INT64", "data": data}
        for name, data in (("input_ids", ids), ("attention_mask", ones), ("token_type_ids", zeros))
    ]
    return json.dumps({"inputs": inputs, "parameters": {"cache": False}}).encode()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def burst(port: int, path: str, payload: bytes, requests: int) -> list[tuple[int, float, bool]]:
    """``requests`` sent at once on pre-opened connections, each answer timed from its own send
    to its last byte by one thread that sends and reads non-blocking sockets in one loop (a lean
    client: with a thread or an asyncio client per connection, the client's own work on the
    same 2 cores would be most of what a fast refusal measures). Each answer: (status,
    seconds, has Retry-After). Status 0 = no answer within 10 minutes."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(requests)]
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, Exchange] = {}
    for index, sock in enumerate(sockets):
        sock.setblocking(False)
        pending[sock] = Exchange(index, memoryview(head + payload))
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    answers: list[tuple[int, float, bool]] = [(0, 0.0, False)] * requests
    deadline = time.perf_counter() + 600
    while pending and time.perf_counter() < deadline:
        for key, events in selector.select(timeout=1.0):
            sock, exchange = key.fileobj, pending[key.fileobj]  # type: ignore[index]
            if events & selectors.EVENT_WRITE and exchange.unsent:
                exchange.send(sock)  # type: ignore[arg-type]
                if not exchange.unsent:
                    selector.modify(sock, selectors.EVENT_READ)
            if events & selectors.EVENT_READ and exchange.receive(sock):  # type: ignore[arg-type]
                answers[exchange.index] = exchange.answer()
                selector.unregister(sock)
                del pending[sock]  # type: ignore[arg-type]
                sock.close()  # type: ignore[union-attr]
    for sock in pending:
        sock.close()
    return answers


@dataclass
class Exchange:
    """One request on its socket: what is left to send, what came back, when it was sent."""

    index: int
    unsent: memoryview
    sent_at: float = 0.0
    received: bytearray = field(default_factory=bytearray)
    done_at: float = 0.0

    def send(self, sock: socket.socket) -> None:
        if not self.sent_at:
            self.sent_at = time.perf_counter()
        try:
            self.unsent = self.unsent[sock.send(self.unsent) :]
        except OSError:  # refused and closed before the body was all sent
            self.unsent = memoryview(b"")

    def receive(self, sock: socket.socket) -> bool:
        """Reads what arrived; True once the whole response (or the connection's end) is in."""
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""
        self.received += chunk
        head, sep, body = bytes(self.received).partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head) if sep else None
        if chunk and not (length and len(body) >= int(length.group(1))):
            return False
        self.done_at = time.perf_counter()
        return True

    def answer(self) -> tuple[int, float, bool]:
        head = bytes(self.received).partition(b"\r\n\r\n")[0]
        status = re.match(rb"HTTP/1\.1 (\d{3})", head)
        retry = re.search(rb"(?im)^retry-after:", head) is not None
        return (int(status.group(1)) if status else 0, self.done_at - self.sent_at, retry)


def tree_rss_mib(pid: int) -> float:
    """RSS of the gateway and its children (the executor and workers of ``--workers N``)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid, *(int(c) for c in children.read_text().split())] if children.exists() else [pid]
    return sum(rss_mib(one) for one in pids)


def rejections(port: int) -> dict[str, float]:
    """``infergate_rejected_requests_total`` by reason, from the gateway's /metrics."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    reasons: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("infergate_rejected_requests_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            reasons[reason] = reasons.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return reasons


def _p99(values: list[float]) -> float:
    return values[int(0.99 * (len(values) - 1))]


def run(repo: Path, clients: int, budget_ms: int, workers: int, warm: bool) -> dict[str, object]:
    env = {"INFERGATE_MAX_QUEUE_WAIT_MS": str(budget_ms)}
    gateway = start_gateway(repo, "--workers", str(workers), env=env)
    try:
        path = "/v2/models/minilm_embed/versions/1/infer"
        payload = body()
        if warm:  # a few requests first: executions measured before the burst
            burst(gateway.http_port, path, payload, 4)
        started = time.perf_counter()
        answers = [
            answer
            for _ in range(2)  # each client sends 2 requests: two bursts
            for answer in burst(gateway.http_port, path, payload, clients)
        ]
        wall = time.perf_counter() - started
        accepted = sorted(seconds for status, seconds, _ in answers if status == 200)
        rejected = sorted(seconds for status, seconds, _ in answers if status != 200)
        statuses: dict[str, int] = {}
        for status, _, _ in answers:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        return {
            "workers": workers,
            "start": "warm" if warm else "cold",
            "budget_ms": budget_ms,
            "statuses": statuses,
            "refusals_without_retry_after": sum(
                1 for status, _, retry in answers if status in (429, 503) and not retry
            ),
            "reasons": rejections(gateway.http_port),
            "wall_s": round(wall, 2),
            "accepted_per_s": round(len(accepted) / wall, 2),
            "accepted_p50_s": round(statistics.median(accepted), 3) if accepted else None,
            "accepted_p99_s": round(_p99(accepted), 3) if accepted else None,
            "rejected_p50_ms": round(1000 * statistics.median(rejected), 1) if rejected else None,
            "rejected_p99_ms": round(1000 * _p99(rejected), 1) if rejected else None,
            "rss_mib_after": round(tree_rss_mib(gateway.process.pid), 1),
        }
    finally:
        gateway.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--workers", default="1,2", help="comma-separated --workers values")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overload.json")
    args = parser.parse_args()
    results = []
    for workers in (int(w) for w in args.workers.split(",")):
        for warm in (False, True):
            shed, unshed = (
                run(args.repo, args.clients, budget, workers, warm) for budget in (5000, 0)
            )
            ratio = float(shed["accepted_per_s"]) / max(float(unshed["accepted_per_s"]), 1e-9)  # type: ignore[arg-type]
            shed["accepted_per_s_vs_no_shedding"] = round(ratio, 3)
            results += [shed, unshed]
            print(json.dumps(shed))
            print(json.dumps(unshed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
