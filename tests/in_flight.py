"""Requests held in flight for the graceful-stop tests, with no timing: rounds of embedding
requests (minilm_embed v1, cache off) grow until the gateway's own metrics show some of them
still pending once every request of the round reached it."""

from __future__ import annotations

import re
import threading

import httpx

from tests.helpers import wait_until

EMBED = {
    "inputs": [
        {
            "name": "input_ids",
            "shape": [1, 48],
            "datatype": "INT64",
            "data": [101] + [2000] * 46 + [102],
        },
        {"name": "attention_mask", "shape": [1, 48], "datatype": "INT64", "data": [1] * 48},
        {"name": "token_type_ids", "shape": [1, 48], "datatype": "INT64", "data": [0] * 48},
    ],
    "parameters": {"cache": False},
}
_ARRIVALS = re.compile(
    r"nv_inference_(pending_request_count|request_success)"
    r'\{model="minilm_embed",version="1"\} (\d+)'
)


def arrivals(base_url: str) -> tuple[int, int]:
    """(pending, succeeded) requests of minilm_embed v1, from the gateway's metrics."""
    values = dict(_ARRIVALS.findall(httpx.get(f"{base_url}/metrics").text))
    return int(values.get("pending_request_count", 0)), int(values.get("request_success", 0))


def send_all(
    url: str, count: int, statuses: list[int], headers: dict[str, str] | None = None
) -> list[threading.Thread]:
    """``count`` requests at once from their own threads; each status lands in ``statuses``.
    The clients exist before the first thread starts (making one costs tens of milliseconds,
    its TLS context), so the requests arrive together rather than one client at a time."""
    lock = threading.Lock()

    def client(http: httpx.Client) -> None:
        with http:
            response = http.post(url, json=EMBED)
            with lock:
                statuses.append(response.status_code)

    clients = [httpx.Client(timeout=120, headers=headers) for _ in range(count)]
    threads = [threading.Thread(target=client, args=(http,)) for http in clients]
    for thread in threads:
        thread.start()
    return threads


def hold_in_flight(
    base_url: str, headers: dict[str, str] | None = None
) -> tuple[list[threading.Thread], list[int]]:
    """Rounds of 24, 48, 96, 192 requests until some pend (a fast machine finishes a round
    before its last request arrives: the next round is twice the size); the client threads and
    the statuses they will record."""
    url = f"{base_url}/v2/models/minilm_embed/infer"
    _, before = arrivals(base_url)
    statuses: list[int] = []
    threads: list[threading.Thread] = []
    pending = 0
    for count in (24, 48, 96, 192):
        threads += send_all(url, count, statuses, headers)
        sent = len(threads)

        def all_arrived(sent: int = sent) -> tuple[int, int] | None:
            pending, done = arrivals(base_url)
            return (pending, done) if pending + done - before >= sent else None

        pending, _ = wait_until(all_arrived, what=f"{sent} requests to reach the gateway")
        if pending:
            break
    assert pending > 0, "every request finished before the signal: nothing was tested"
    return threads, statuses
