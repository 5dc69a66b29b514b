"""The gateway in front of two real Triton servers: answers, failover, rejoin, all-down 503.

Two ``tritonserver`` processes serve the python-backend twin of a small ONNX model; the gateway
(``infergate serve --backend triton``) talks to them over gRPC or HTTP (both are run). Answers
through the gateway must equal ONNX Runtime run directly on the model file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from service.errors import BadRequest
from service.models.sources import TritonSource
from service.settings import Settings
from tests.helpers import Gateway, start_gateway, wait_until, wait_until_async
from tests.triton_models import FEATURES, MODEL
from tests.triton_server import (  # noqa: F401  (fixtures)
    TritonRepos,
    TritonServer,
    triton_repos,
    triton_servers,
    triton_tree,
)

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@dataclass
class Cluster:
    replicas: list[TritonServer]
    gateway: Gateway
    session: ort.InferenceSession  # direct ONNX Runtime on the same model file

    def reference(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {"x": x})[0])

    def ensure_up(self) -> None:
        for replica in self.replicas:
            if not replica.alive():
                replica.start()


@pytest.fixture(scope="module")
def replicas(triton_servers, triton_repos: TritonRepos) -> list[TritonServer]:  # noqa: F811
    return [triton_servers(triton_repos.python), triton_servers(triton_repos.python)]


@pytest.fixture(scope="module", params=["grpc", "http"])
def cluster(
    request: pytest.FixtureRequest,
    replicas: list[TritonServer],
    triton_repos: TritonRepos,  # noqa: F811
) -> Iterator[Cluster]:
    protocol = request.param
    for replica in replicas:
        if not replica.alive():
            replica.start()
    urls = [r.grpc_url if protocol == "grpc" else r.http_url for r in replicas]
    args = ["--backend", "triton"]
    for url in urls:
        args += ["--triton-url", url]
    gateway = start_gateway(
        triton_repos.onnx,  # ignored by the triton backend; the models come from Triton
        *args,
        env={"INFERGATE_TRITON_PROTOCOL": protocol, "INFERGATE_TRITON_HEALTH_INTERVAL_S": "0.5"},
    )
    session = ort.InferenceSession(
        str(triton_repos.onnx / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    cluster = Cluster(replicas, gateway, session)
    yield cluster
    gateway.stop()
    cluster.ensure_up()


def _http_infer(url: str, x: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    return np.asarray(client.infer(MODEL, [tensor]).as_numpy("probs"))


def _grpc_infer(client: grpcclient.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return np.asarray(client.infer(MODEL, [tensor]).as_numpy("probs"))


def test_answers_equal_onnxruntime_over_rest_and_grpc(cluster: Cluster) -> None:
    rng = np.random.default_rng(1)
    grpc = grpcclient.InferenceServerClient(cluster.gateway.grpc_url)
    before = [r.inference_count(MODEL) for r in cluster.replicas]
    for rows in (1, 3, 8):
        x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
        expected = cluster.reference(x)
        np.testing.assert_allclose(_http_infer(cluster.gateway.http_url, x), expected, rtol=1e-5)
        np.testing.assert_allclose(_grpc_infer(grpc, x), expected, rtol=1e-5)
    # Triton records statistics after it sent the response: wait for the last one to land
    wait_until(
        lambda: sum(r.inference_count(MODEL) for r in cluster.replicas) - sum(before) >= 6,
        what="Triton to count the 6 requests (did they reach it?)",
    )


def test_metadata_and_config_come_from_triton(cluster: Cluster) -> None:
    client = httpclient.InferenceServerClient(cluster.gateway.http_url)
    config = client.get_model_config(MODEL)
    assert config["backend"] == "python"  # what Triton serves, not the local ONNX repository
    assert int(config["max_batch_size"]) == 32
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, FEATURES]}]


def test_bad_input_is_400_and_serving_continues(cluster: Cluster) -> None:
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    response = httpx.post(f"{cluster.gateway.base_url}/v2/models/{MODEL}/infer", json=bad)
    assert response.status_code == 400, response.text
    assert "x" in response.json()["error"]
    x = np.ones((1, FEATURES), np.float32)
    np.testing.assert_allclose(_http_infer(cluster.gateway.http_url, x), cluster.reference(x))


@dataclass
class Load:
    """20 clients (half REST, half gRPC) sending until stopped; every answer is checked."""

    cluster: Cluster
    clients: int = 20
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, args=(i,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _client(self, i: int) -> None:
        rng = np.random.default_rng(100 + i)
        gateway = self.cluster.gateway
        grpc = grpcclient.InferenceServerClient(gateway.grpc_url) if i % 2 else None
        http = httpclient.InferenceServerClient(gateway.http_url) if not i % 2 else None
        while not self.stop.is_set():
            x = rng.normal(size=(1, FEATURES)).astype(np.float32)
            try:
                if grpc is not None:
                    got = _grpc_infer(grpc, x)
                else:
                    assert http is not None
                    tensor = httpclient.InferInput("x", [1, FEATURES], "FP32")
                    tensor.set_data_from_numpy(x, binary_data=True)
                    got = np.asarray(http.infer(MODEL, [tensor]).as_numpy("probs"))
                np.testing.assert_allclose(got, self.cluster.reference(x), rtol=1e-5)
            except (InferenceServerException, AssertionError) as exc:
                with self.lock:
                    self.failures.append(str(exc))
            else:
                with self.lock:
                    self.ok += 1

    def wait_for(self, successes: int) -> None:
        """Until ``successes`` more answers came back (or some answer was wrong)."""
        target = self.ok + successes
        wait_until(
            lambda: self.failures or (self.ok >= target and self.ok),
            what=f"{successes} more correct answers under load (have {self.ok}, want {target})",
        )


def test_replica_killed_under_load_then_rejoins(cluster: Cluster) -> None:
    victim, survivor = cluster.replicas
    cluster.ensure_up()
    with Load(cluster) as load:
        load.wait_for(200)
        wait_until(
            lambda: min(victim.inference_count(MODEL), survivor.inference_count(MODEL)) > 0,
            what="traffic to reach both replicas",
        )
        victim.kill()  # SIGKILL mid-load: in-flight batches fail and are retried
        load.wait_for(300)
        assert not load.failures, f"{len(load.failures)} failed, first: {load.failures[0]}"
        victim.start()  # same ports; Triton's counters start again from zero
        wait_until(
            lambda: victim.inference_count(MODEL) > 0, what="the restarted replica to rejoin"
        )
        load.wait_for(50)
    assert not load.failures, f"{len(load.failures)} failed, first: {load.failures[0]}"
    assert load.ok >= 550


def test_all_replicas_down_is_a_clear_503(cluster: Cluster) -> None:
    cluster.ensure_up()
    for replica in cluster.replicas:
        replica.kill()
    try:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, FEATURES]}]}
        body["inputs"][0]["data"] = [0.5] * FEATURES
        response = httpx.post(f"{cluster.gateway.base_url}/v2/models/{MODEL}/infer", json=body)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert MODEL in error and "Triton" in error
        for replica in cluster.replicas:
            assert replica.grpc_url in error or replica.http_url in error
        grpc = grpcclient.InferenceServerClient(cluster.gateway.grpc_url)
        with pytest.raises(InferenceServerException) as raised:
            _grpc_infer(grpc, np.zeros((1, FEATURES), np.float32))
        assert raised.value.status() == "StatusCode.UNAVAILABLE"
        assert "no healthy Triton replica" in str(raised.value.message())
    finally:
        cluster.ensure_up()
    x = np.ones((2, FEATURES), np.float32)
    wait_until(lambda: _recovered(cluster, x), what="the gateway to serve again after restarts")


def _recovered(cluster: Cluster, x: np.ndarray) -> bool:
    try:
        got = _http_infer(cluster.gateway.http_url, x)
    except InferenceServerException:
        return False
    np.testing.assert_allclose(got, cluster.reference(x), rtol=1e-5)
    return True


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_triton_rejection_is_bad_request_and_not_retried(
    replicas: list[TritonServer], protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A request Triton rejects is the client's fault: BadRequest, no retry (a retry logs a
    warning) and no replica taken out of rotation."""
    for replica in replicas:
        if not replica.alive():
            replica.start()
    urls = [r.grpc_url if protocol == "grpc" else r.http_url for r in replicas]
    source = TritonSource(Settings(backend="triton", triton_url=urls, triton_protocol=protocol))
    try:
        (config, backend), *_ = (await source.load(MODEL)).values()
        assert config.max_batch_size == 32 and config.backend == "python"
        with pytest.raises(BadRequest, match="unexpected shape for input 'x'"):
            await backend.execute({"x": np.zeros((2, FEATURES + 1), np.float32)}, ["probs"])
        assert all(replica.healthy for replica in source.pool.replicas)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not warnings, warnings
    finally:
        await source.close()


async def test_replica_without_the_model_gets_no_traffic(
    replicas: list[TritonServer],
    triton_servers,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Routing follows each replica's repository index: no request is wasted on a replica that
    lacks the model (each would log a warning and cost a retry)."""
    (tmp_path / "empty").mkdir()
    empty = triton_servers(tmp_path / "empty")
    serving = replicas[0]
    if not serving.alive():
        serving.start()
    source = TritonSource(Settings(backend="triton", triton_url=[empty.grpc_url, serving.grpc_url]))
    try:
        assert await source.model_names() == [MODEL]
        (_, backend), *_ = (await source.load(MODEL)).values()
        before = serving.inference_count(MODEL)
        x = np.ones((1, FEATURES), np.float32)
        for _ in range(6):
            await backend.execute({"x": x}, ["probs"])
        # Triton updates its statistics just after answering: wait for them to settle.
        await wait_until_async(
            lambda: serving.inference_count(MODEL) - before >= 6, what="Triton's stats"
        )
        assert serving.inference_count(MODEL) - before == 6
        wasted = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not wasted, wasted
    finally:
        await source.close()
        empty.stop()
