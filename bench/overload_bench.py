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
import statistics
import sys
import threading
import time
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
    """``requests`` sent at once on pre-opened connections, then every answer read, each timed
    from its send (a lean client: an asyncio HTTP client's own work would dominate on 2 cores).
    Each answer: (status, seconds, has Retry-After). Status 0 = no answer within 10 minutes."""
    connections = [
        http.client.HTTPConnection("127.0.0.1", port, timeout=600) for _ in range(requests)
    ]
    for connection in connections:
        connection.connect()
    sent: list[float] = []
    for connection in connections:
        connection.request("POST", path, payload, {"Content-Type": "application/json"})
        sent.append(time.perf_counter())
    answers: list[tuple[int, float, bool]] = [(0, 0.0, False)] * requests

    def read(index: int) -> None:
        try:
            response = connections[index].getresponse()
            response.read()
            retry = response.getheader("retry-after") is not None
            answers[index] = (response.status, time.perf_counter() - sent[index], retry)
        except OSError:
            answers[index] = (0, time.perf_counter() - sent[index], False)
        connections[index].close()

    threads = [threading.Thread(target=read, args=(index,)) for index in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


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
