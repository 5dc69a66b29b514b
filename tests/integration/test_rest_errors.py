"""Bad input gets a precise 4xx in the v2 error shape; the gateway keeps serving everyone else."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2

from tests.helpers import Gateway, edit_config, start_gateway, wait_until

GOOD = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


def binary_body(header: dict, blob: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(header).encode()
    return encoded + blob, {
        "Inference-Header-Content-Length": str(len(encoded)),
        "Content-Type": "application/octet-stream",
    }


def binary_input(shape, datatype="FP32", size=None, name="input"):
    return {
        "name": name,
        "shape": shape,
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }


FLOATS_64 = np.zeros(64, dtype=np.float32).tobytes()

# A few rows of the bad-request table (tests/service/frontends/rest/test_codec.py has all of them in
# process): through a real server they must render in the v2 shape and leave it serving.
CASES = {
    "malformed json": (b'{"inputs": [', {}, 400, "malformed JSON"),
    "wrong shape": (
        json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0] * 63}]}
        ).encode(),
        {},
        400,
        "unexpected shape for input 'input' for model 'digits_mlp'. Expected [-1,64], got [1,63]",
    ),
    "truncated binary body": (
        *binary_body({"inputs": [binary_input([1, 64], size=256)]}, FLOATS_64[:100]),
        400,
        "binary_data_size 256 runs past the end of the body",
    ),
    "bad gzip": (b"not gzip at all", {"Content-Encoding": "gzip"}, 400, "not valid gzip data"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_gets_a_precise_4xx(gateway, case):
    body, headers, status, message = CASES[case]
    response = httpx.post(
        f"{gateway.base_url}/v2/models/digits_mlp/infer", content=body, headers=headers
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error
    healthy = httpx.post(f"{gateway.base_url}/v2/models/digits_mlp/infer", json=GOOD)
    assert healthy.status_code == 200


@pytest.mark.parametrize(
    "method, path, status, message",
    [
        ("GET", "/v2/nothing/here", 404, "no endpoint GET /v2/nothing/here"),
        ("GET", "/v2/models/..%2F..%2Fetc/config", 404, "no endpoint"),
        ("GET", "/v2/models/nope/config", 404, "Request for unknown model: 'nope' is not found"),
        (
            "DELETE",
            "/v2/models/digits_mlp",
            405,
            "method not allowed: DELETE /v2/models/digits_mlp",
        ),
        ("POST", "/v2/repository/index", 400, "malformed JSON"),
    ],
)
def test_every_route_answers_errors_in_the_v2_shape(gateway, method, path, status, message):
    body = b"{not json" if path.endswith("index") else None
    response = httpx.request(method, f"{gateway.base_url}{path}", content=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"], response.text


def test_statistics_of_all_models_is_not_taken_for_a_model_named_stats(gateway):
    stats = httpx.get(f"{gateway.base_url}/v2/models/stats")
    assert stats.status_code == 200
    names = {entry["name"] for entry in stats.json()["model_stats"]}
    assert {"digits_mlp", "minilm_embed"} <= names


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/v2/models/nope/infer", 404, "Request for unknown model: 'nope' is not found"),
        (
            "/v2/models/digits_mlp/versions/77/infer",
            404,
            "Request for unknown model: 'digits_mlp' version 77 is not found (ready versions: 1)",
        ),
    ],
)
def test_unknown_model_or_version(gateway, path, status, message):
    response = httpx.post(f"{gateway.base_url}{path}", json=GOOD)
    assert response.status_code == status
    assert message in response.json()["error"]
    metadata = httpx.get(f"{gateway.base_url}{path.removesuffix('/infer')}")
    assert metadata.status_code == 404 and "error" in metadata.json()


def test_oversized_body_is_refused_before_reading_it(example_repo):
    server = start_gateway(example_repo, env={"INFERGATE_MAX_REQUEST_BYTES": "4096"})
    try:
        big = {
            "inputs": [
                {"name": "input", "shape": [40, 64], "datatype": "FP32", "data": [0.25] * 2560}
            ]
        }
        response = httpx.post(f"{server.base_url}/v2/models/digits_mlp/infer", json=big)
        assert response.status_code == 413
        assert "exceeds 4096" in response.json()["error"]
        assert (
            httpx.post(f"{server.base_url}/v2/models/digits_mlp/infer", json=GOOD).status_code
            == 200
        )
    finally:
        server.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def burst(port: int, path: str, body: bytes, count: int) -> list[tuple[int, dict, bytes]]:
    """Send ``count`` requests at once on pre-opened connections, then read every answer."""
    import http.client

    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=120) for _ in range(count)]
    for connection in connections:
        connection.connect()
    for connection in connections:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
    answers = []
    for connection in connections:
        response = connection.getresponse()
        answers.append((response.status, dict(response.getheaders()), response.read()))
        connection.close()
    return answers


def test_overload_gives_fast_503_bounded_memory_and_recovers(example_repo, tmp_path):
    """Requests one at a time (max_batch_size 1) behind a queue of 4: a burst must overflow it."""
    shutil.copytree(example_repo / "minilm_embed", tmp_path / "minilm_embed")
    edit_config(tmp_path / "minilm_embed" / "config.pbtxt", one_instance_one_row)
    server = start_gateway(
        tmp_path, env={"INFERGATE_MAX_QUEUE_SIZE": "4", "INFERGATE_CACHE_ENABLED": "false"}
    )
    try:
        seq = 128
        ids = np.random.default_rng(0).integers(1000, 5000, size=(1, seq)).tolist()
        body = {
            "inputs": [
                {"name": "input_ids", "shape": [1, seq], "datatype": "INT64", "data": ids},
                {
                    "name": "attention_mask",
                    "shape": [1, seq],
                    "datatype": "INT64",
                    "data": [1] * seq,
                },
                {
                    "name": "token_type_ids",
                    "shape": [1, seq],
                    "datatype": "INT64",
                    "data": [0] * seq,
                },
            ]
        }
        path = "/v2/models/minilm_embed/versions/1/infer"
        payload = json.dumps(body).encode()
        before = rss_kib(server.process.pid)
        for _ in range(3):
            answers = burst(server.http_port, path, payload, 60)
            statuses = [status for status, _, _ in answers]
            assert set(statuses) <= {200, 503}
            rejected = [(headers, data) for status, headers, data in answers if status == 503]
            assert rejected, "a queue of 4 cannot absorb 60 requests served one at a time"
            assert statuses.count(200) >= 4
            assert all(headers.get("retry-after") == "1" for headers, _ in rejected)
            assert all("queue is full" in json.loads(data)["error"] for _, data in rejected)
        grown_mib = (rss_kib(server.process.pid) - before) / 1024
        assert grown_mib < 300, f"RSS grew {grown_mib:.0f} MiB under overload"
        assert httpx.post(f"{server.base_url}{path}", json=body, timeout=60).status_code == 200
        metrics = httpx.get(f"{server.base_url}/metrics").text
        assert (
            'infergate_rejected_requests_total{model="minilm_embed",reason="queue_full"}' in metrics
        )
    finally:
        server.stop()


def pending(base_url: str, model: str, version: str) -> int:
    metrics = httpx.get(f"{base_url}/metrics").text
    key = f'nv_inference_pending_request_count{{model="{model}",version="{version}"}} '
    line = next(line for line in metrics.splitlines() if line.startswith(key))
    return int(float(line.removeprefix(key)))


def arrived(base_url: str) -> int:
    """Requests that reached minilm_embed v1: finished plus still pending."""
    stats = httpx.get(f"{base_url}/v2/models/minilm_embed/versions/1/stats").json()
    done = stats["model_stats"][0]["inference_stats"]["success"]["count"]
    return int(done) + pending(base_url, "minilm_embed", "1")


def cancelled(base_url: str) -> float:
    metrics = httpx.get(f"{base_url}/metrics").text
    key = 'infergate_rejected_requests_total{model="minilm_embed",reason="cancelled"} '
    lines = metrics.splitlines()
    values = [float(line.removeprefix(key)) for line in lines if line.startswith(key)]
    return values[0] if values else 0.0


def one_instance_one_row(config: model_config_pb2.ModelConfig) -> None:
    config.max_batch_size = 1
    del config.dynamic_batching.preferred_batch_size[:]  # Triton refuses sizes over the max
    config.instance_group[0].count = 1


def hang_up_behind(server: Gateway, blockers: int, body: dict) -> None:
    """``blockers`` requests reach the queue, then one more that hangs up once it arrived too."""
    url = f"{server.base_url}/v2/models/minilm_embed/versions/1/infer"
    before = arrived(server.base_url)
    threads = [
        threading.Thread(target=httpx.post, args=(url,), kwargs={"json": body, "timeout": 300})
        for _ in range(blockers)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: arrived(server.base_url) >= before + blockers, what="the blockers to queue")
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(
            b"POST /v2/models/minilm_embed/versions/1/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )
        # hang up only once the request is inside the gateway
        wait_until(
            lambda: arrived(server.base_url) >= before + blockers + 1,
            what="the request that hangs up to arrive",
        )
    for thread in threads:
        thread.join(300)
    wait_until(
        lambda: pending(server.base_url, "minilm_embed", "1") == 0, what="the queue to drain"
    )


def test_a_client_that_hangs_up_is_dropped_from_the_queue(example_repo, tmp_path):
    """One instance and no batching: requests queue up; one more hangs up while queued.

    No timing: the gateway's ``cancelled`` counter says whether the request that hung up was
    still queued. If the blockers were all served before it arrived (a fast gateway), it ran:
    a round with twice the blockers follows.
    """
    shutil.copytree(example_repo / "minilm_embed", tmp_path / "minilm_embed")
    edit_config(tmp_path / "minilm_embed" / "config.pbtxt", one_instance_one_row)
    # no shedding by predicted wait: this test needs a deep queue
    server = start_gateway(
        tmp_path,
        "--no-batching",
        "--max-queue-wait-ms",
        "0",
        env={"INFERGATE_CACHE_ENABLED": "false"},
    )
    seq = 256
    body = {
        "inputs": [
            {"name": "input_ids", "shape": [1, seq], "datatype": "INT64", "data": [2000] * seq},
            {"name": "attention_mask", "shape": [1, seq], "datatype": "INT64", "data": [1] * seq},
            {"name": "token_type_ids", "shape": [1, seq], "datatype": "INT64", "data": [0] * seq},
        ]
    }
    try:
        rounds = []
        for blockers in (24, 48, 96, 192):
            rounds.append(blockers)
            hang_up_behind(server, blockers, body)
            if cancelled(server.base_url):
                break
        assert cancelled(server.base_url) == 1.0
        stats = httpx.get(f"{server.base_url}/v2/models/minilm_embed/versions/1/stats").json()
        # every blocker ran, and of the requests that hung up only those that were not queued
        assert stats["model_stats"][0]["execution_count"] == sum(rounds) + len(rounds) - 1
    finally:
        server.stop()
