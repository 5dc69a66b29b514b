"""Hostile input and slow clients against a real server: every row answers a precise 4xx (or is
closed), memory stays bounded, and the server serves a normal request right after each."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.helpers import Gateway, start_gateway, wait_until

GOOD = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
MIB = 1024 * 1024


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or at its peak so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def serves(gateway: Gateway) -> None:
    """The server still answers a normal request."""
    response = httpx.post(f"{gateway.base_url}/v2/models/digits_mlp/infer", json=GOOD, timeout=60)
    assert response.status_code == 200, response.text


def post(gateway: Gateway, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}{path}", content=body, headers=headers, timeout=120)


def tokens(ids: int, mask: int | None = None, token: int = 1) -> bytes:
    def tensor(name: str, length: int) -> dict[str, object]:
        data = [token] * length if name == "input_ids" else [1] * length
        return {"name": name, "shape": [1, length], "datatype": "INT64", "data": data}

    mask = ids if mask is None else mask
    inputs = [tensor("input_ids", ids), tensor("attention_mask", mask)]
    return json.dumps({"inputs": [*inputs, tensor("token_type_ids", ids)]}).encode()


@pytest.fixture(scope="module")
def gateway(example_repo: Path) -> Iterator[Gateway]:
    server = start_gateway(example_repo, env={"INFERGATE_SERVER_NAME": "triton"})
    yield server
    server.stop()


ROWS: dict[str, tuple[str, bytes, dict[str, str], int, str]] = {
    "datatype {}": (
        "digits_mlp",
        json.dumps({"inputs": [{**GOOD["inputs"][0], "datatype": {}}]}).encode(),
        {},
        400,
        "unknown datatype {}",
    ),
    "datatype []": (
        "digits_mlp",
        json.dumps({"inputs": [{**GOOD["inputs"][0], "datatype": []}]}).encode(),
        {},
        400,
        "unknown datatype []",
    ),
    "33 dimensions": (
        "digits_mlp",
        json.dumps({"inputs": [{**GOOD["inputs"][0], "shape": [1] * 33, "data": [1]}]}).encode(),
        {},
        400,
        "unexpected shape for input 'input'",
    ),
    "65 dimensions": (
        "digits_mlp",
        json.dumps({"inputs": [{**GOOD["inputs"][0], "shape": [1] * 65, "data": [1]}]}).encode(),
        {},
        400,
        "at most 64",
    ),
    "sequence length 0": ("minilm_embed", tokens(0), {}, 400, "has an empty sequence"),
    "paired lengths differ": ("minilm_embed", tokens(8, 7), {}, 400, "must have the same shape"),
    "sequence over 512": ("minilm_embed", tokens(513), {}, 400, "takes at most 512"),
    "negative token id": (
        "minilm_embed",
        tokens(4, token=-1),
        {},
        400,
        "input 'input_ids' has a token id outside the vocabulary 0..30521",
    ),
    "token id past the vocabulary": (
        "minilm_embed",
        tokens(4, token=30522),
        {},
        400,
        "input 'input_ids' has a token id outside the vocabulary 0..30521",
    ),
    "token id 2**63": ("minilm_embed", tokens(4, token=2**63), {}, 400, "does not fit datatype"),
    "FP32 data as strings": (
        "digits_mlp",
        json.dumps({"inputs": [{**GOOD["inputs"][0], "data": ["1e3"] * 64}]}).encode(),
        {},
        400,
        "JSON strings given",
    ),
    "truncated gzip": (
        "digits_mlp",
        gzip.compress(json.dumps(GOOD).encode())[:-8],
        {"Content-Encoding": "gzip"},
        400,
        "truncated gzip data",
    ),
    "BYTES, 15 M empty elements": (
        "digits_mlp",
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [15_000_000],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 60_000_000},
                    }
                ]
            }
        ).encode(),
        {},
        400,
        "data-type is 'BYTES', but model 'digits_mlp' expects 'FP32'",
    ),
}


@pytest.mark.parametrize("row", list(ROWS), ids=list(ROWS))
def test_hostile_request_gets_a_precise_4xx(gateway: Gateway, row: str) -> None:
    model, body, headers, status, message = ROWS[row]
    if row.startswith("BYTES"):  # the header says 60 MB follow; none do: decided before reading
        headers = {"Inference-Header-Content-Length": str(len(body))}
    response = post(gateway, f"/v2/models/{model}/infer", body, **headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    serves(gateway)


def test_a_million_tokens_are_refused_and_memory_is_given_back(gateway: Gateway) -> None:
    body = tokens(1_000_000)
    assert len(body) > 8 * MIB
    serves(gateway)
    before = rss_mib(gateway.process.pid)
    for _ in range(3):
        response = post(gateway, "/v2/models/minilm_embed/versions/1/infer", body)
        assert response.status_code == 400
        assert "takes at most 512" in response.json()["error"]
    serves(gateway)
    grown = rss_mib(gateway.process.pid) - before
    assert grown < 50, f"RSS grew {grown:.0f} MiB after three 1,000,000-token requests"


def test_huge_json_bodies_in_parallel_are_refused_with_bounded_memory(gateway: Gateway) -> None:
    data = b"[" + b"0," * (30 * MIB - 1) + b"0]"  # 60 MB of JSON zeros
    body = b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": '
    body += data + b"}]}"
    compressed = gzip.compress(body)
    url = f"{gateway.base_url}/v2/models/digits_mlp/infer"
    serves(gateway)
    before = rss_mib(gateway.process.pid)
    for content, headers in ((body, {}), (compressed, {"Content-Encoding": "gzip"})):

        def send(_: int, content: bytes = content, headers: dict[str, str] = headers) -> int:
            answer = httpx.post(url, content=content, headers=headers, timeout=120)
            assert "exceeds" in answer.json()["error"], answer.text
            return answer.status_code

        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(send, range(4))) == {413}
        serves(gateway)
    peak = (rss_mib(gateway.process.pid, "VmHWM") - before) / 4
    assert peak < 256, f"peak growth of {peak:.0f} MiB per 60 MB request"
    grown = rss_mib(gateway.process.pid) - before
    assert grown < 100, f"RSS grew {grown:.0f} MiB after 60 MB bodies"


def test_unsupported_extensions_answer_v2_errors(gateway: Gateway) -> None:
    client = httpclient.InferenceServerClient(gateway.http_url)
    with pytest.raises(InferenceServerException, match="system shared memory is not supported"):
        client.get_system_shared_memory_status()
    with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported"):
        client.get_cuda_shared_memory_status()
    assert client.get_server_metadata()["name"] == "triton"  # INFERGATE_SERVER_NAME
    assert "system_shared_memory" not in client.get_server_metadata()["extensions"]
    stats = client.get_inference_statistics()  # no model: every model, as Triton answers
    assert {"digits_mlp", "minilm_embed"} <= {m["name"] for m in stats["model_stats"]}
    client.close()


def test_openapi_documents_infer(gateway: Gateway) -> None:
    schema = httpx.get(f"{gateway.base_url}/openapi.json").json()
    infer = schema["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InferenceRequest"
    }
    assert "RequestInput" in schema["components"]["schemas"]
    embeddings = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]
    assert embeddings["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EmbeddingsRequest"
    }
    load = schema["paths"]["/v2/repository/models/{model}/load"]["post"]["responses"]
    assert "422" not in load and load["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    documented = [code for path in schema["paths"].values() for op in path.values()
                  for code in op.get("responses", {})]  # fmt: skip
    assert "422" not in documented, "a 422 {detail} is never answered"


@pytest.mark.parametrize("token", [2**63, 2**64 - 1, -1, 30522])
def test_token_ids_outside_the_vocabulary_are_precise_400s_everywhere(
    gateway: Gateway, token: int
) -> None:
    base = gateway.base_url
    openai = httpx.post(
        f"{base}/v1/embeddings", json={"model": "minilm_embed", "input": [[101, token, 102]]}
    )
    assert openai.status_code == 400, openai.text
    error = openai.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "input"
    assert "has a token id outside the vocabulary 0..30521" in error["message"]
    instances = [{"input_ids": [101, token], "attention_mask": [1, 1], "token_type_ids": [0, 0]}]
    predict = httpx.post(f"{base}/v1/models/minilm_embed:predict", json={"instances": instances})
    assert predict.status_code == 400, predict.text
    assert "input 'input_ids'" in predict.json()["error"]
    serves(gateway)


def test_repository_control_outside_explicit_mode_changes_nothing(gateway: Gateway) -> None:
    base = gateway.base_url
    unknown = httpx.post(f"{base}/v2/repository/models/nosuchmodel/load")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "Request for unknown model: 'nosuchmodel' is not found"
    refused = httpx.post(f"{base}/v2/repository/models/digits_mlp/unload")
    assert refused.status_code == 400
    assert "explicit model load / unload is not allowed" in refused.json()["error"]
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    names = {row["name"] for row in httpx.post(f"{base}/v2/repository/index").json()}
    assert "nosuchmodel" not in names
    serves(gateway)


def test_explicit_mode_readiness_and_config_overrides(example_repo: Path, tmp_path: Path) -> None:
    for name in ("digits_mlp", "cancer_gbt"):
        shutil.copytree(example_repo / name, tmp_path / name)
    server = start_gateway(tmp_path, "--model-control-mode", "explicit")
    try:
        base = server.base_url
        assert httpx.post(f"{base}/v2/repository/models/nosuchmodel/load").status_code == 404
        assert httpx.post(f"{base}/v2/repository/models/cancer_gbt/unload").status_code == 200
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200  # unloaded: not counted
        load = f"{base}/v2/repository/models/digits_mlp/load"
        bad = httpx.post(load, json={"parameters": {"config": '{"max_batch_size": "x"}'}})
        assert bad.status_code == 400 and "failed to load 'digits_mlp'" in bad.json()["error"]
        for invalid, reason in (
            ({"max_batch_size": -5}, "max_batch_size must be >= 0, not -5"),
            (
                {"max_batch_size": 2, "dynamic_batching": {"preferred_batch_size": [4]}},
                "preferred_batch_size 4 is not in 1..max_batch_size (2)",
            ),
        ):
            refused = httpx.post(load, json={"parameters": {"config": json.dumps(invalid)}})
            assert refused.status_code == 400, refused.text
            assert reason in refused.json()["error"]
        files = httpx.post(load, json={"parameters": {"file:1/model.onnx": "AAAA"}})
        assert files.status_code == 400 and "file overrides" in files.json()["error"]
        serves(server)  # neither changed the served model
        # Triton's semantics: the JSON config replaces config.pbtxt for this load; what it
        # leaves out (inputs, outputs) is completed from the graph
        override = {"parameters": {"config": json.dumps({"max_batch_size": 4})}}
        assert httpx.post(load, json=override).status_code == 200
        config = httpx.get(f"{base}/v2/models/digits_mlp/config").json()
        assert config["max_batch_size"] == 4 and config["input"][0]["dims"] == [64]
        too_many = {"inputs": [{**GOOD["inputs"][0], "shape": [5, 64], "data": [0.5] * 320}]}
        refused = httpx.post(f"{base}/v2/models/digits_mlp/infer", json=too_many)
        assert refused.status_code == 400 and "batch-size must be <= 4" in refused.json()["error"]
        serves(server)
    finally:
        server.stop()


def _stalled_connections(port: int, count: int) -> list[socket.socket]:
    """Connections that send headers announcing a body that never comes."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        sock.sendall(
            b"POST /v2/models/digits_mlp/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        sockets.append(sock)
    return sockets


def test_slow_clients_are_answered_408_and_closed(example_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(example_repo / "digits_mlp", tmp_path / "digits_mlp")
    server = start_gateway(tmp_path, env={"INFERGATE_HTTP_READ_TIMEOUT_S": "3"})
    try:
        stalled = _stalled_connections(server.http_port, 20)
        silent = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(5)]
        for sock in stalled + silent:  # each is answered 408 and closed by the read timeout
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"request not received within 3 s" in answer
            sock.close()
        serves(server)
    finally:
        server.stop()


def test_connections_beyond_the_cap_get_a_fast_503(example_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(example_repo / "digits_mlp", tmp_path / "digits_mlp")
    env = {"INFERGATE_HTTP_READ_TIMEOUT_S": "600", "INFERGATE_MAX_CONNECTIONS": "8"}
    server = start_gateway(tmp_path, env=env)
    try:
        serves(server)
        idle = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(12)]

        def shed() -> httpx.Response | None:
            """A request on a new connection, once the server has taken in the idle ones (with
            --workers N each worker accepts its share of them on its own)."""
            with httpx.Client(timeout=60) as client:
                answer = client.post(f"{server.base_url}/v2/models/digits_mlp/infer", json=GOOD)
            return answer if answer.status_code != 200 else None

        refused = wait_until(shed, 60, "the connection cap to refuse a request")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "more than 8 connections" in refused.json()["error"]
        for sock in idle:
            sock.close()
        wait_until(
            lambda: (
                httpx.post(
                    f"{server.base_url}/v2/models/digits_mlp/infer", json=GOOD, timeout=60
                ).status_code
                == 200
            ),
            60,
            "a request to be served once the idle connections closed",
        )
    finally:
        server.stop()


def test_sigterm_with_stalled_connections_exits_within_the_drain_timeout(
    example_repo: Path, tmp_path: Path
) -> None:
    shutil.copytree(example_repo / "digits_mlp", tmp_path / "digits_mlp")
    env = {"INFERGATE_HTTP_READ_TIMEOUT_S": "600", "INFERGATE_EXIT_TIMEOUT_S": "1"}
    server = start_gateway(tmp_path, env=env)
    stalled = _stalled_connections(server.http_port, 50)
    try:
        wait_until(
            lambda: "HTTP listening" in server.log() and server.alive(), 60, "the gateway up"
        )
        serves(server)
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=120)  # a hang guard, not a timing assertion
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after SIGTERM:\n{server.log()[-2000:]}")
        assert code == 0, server.log()[-2000:]
    finally:
        for sock in stalled:
            sock.close()
        server.stop()
