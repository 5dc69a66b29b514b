"""Keys, scopes, restricted APIs, TLS, shared rate limits and shedding on real gateway processes.

Real clients throughout: tritonclient.http / .grpc passing headers, httpx over TLS, grpc stubs
for trailers, redis-server processes for the shared limiter.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from service.security.keys import create_key, revoke_key
from tests.helpers import Gateway, start_gateway, wait_until
from tests.redis_server import redis_server, redis_server_factory
from tests.tls_certs import Certificates, make_certificates

__all__ = ["redis_server", "redis_server_factory"]

DIGITS = np.linspace(0, 16, 64, dtype=np.float32).reshape(1, 64)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def http_infer(client: httpclient.InferenceServerClient, model: str, key: str) -> np.ndarray:
    data = DIGITS if model != "cancer_gbt" else np.zeros((1, 30), dtype=np.float32)
    infer_input = httpclient.InferInput("input", list(data.shape), "FP32")
    infer_input.set_data_from_numpy(data)
    result = client.infer(model, [infer_input], headers=bearer(key))
    return result.as_numpy(result.get_response()["outputs"][0]["name"])


def grpc_infer(client: grpcclient.InferenceServerClient, key: str) -> np.ndarray:
    infer_input = grpcclient.InferInput("input", list(DIGITS.shape), "FP32")
    infer_input.set_data_from_numpy(DIGITS)
    return client.infer("digits_mlp", [infer_input], headers=bearer(key)).as_numpy("probabilities")


def refused(call: object, status: str) -> str:
    """Run ``call``; it must fail with ``status`` (HTTP code or gRPC StatusCode name)."""
    with pytest.raises(InferenceServerException) as error:
        call()  # type: ignore[operator]
    assert status in str(error.value.status()), error.value
    return str(error.value.message())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("keys") / "api-keys.json"
    made = {
        "admin": create_key(path, "admin", ["infer", "read", "admin"]),
        "reader": create_key(path, "reader", ["read"]),
        "digits": create_key(path, "digits", ["infer"], ["digits_mlp"]),
        "doomed": create_key(path, "doomed", ["infer", "read"]),
    }
    return path, made


@pytest.fixture(scope="module")
def secured(example_repo: Path, keys: tuple[Path, dict[str, str]]) -> Iterator[Gateway]:
    gateway = start_gateway(
        example_repo,
        "--model-control-mode",
        "explicit",
        env={"INFERGATE_API_KEYS_FILE": str(keys[0]), "INFERGATE_API_KEYS_RELOAD_S": "0.2"},
    )
    yield gateway
    gateway.stop()


def test_rest_keys_scopes_and_models(secured: Gateway, keys: tuple[Path, dict[str, str]]) -> None:
    key = keys[1]
    client = httpclient.InferenceServerClient(secured.http_url)
    assert "missing API key" in refused(lambda: client.get_model_config("digits_mlp"), "401")
    assert "invalid" in refused(
        lambda: client.get_model_config("digits_mlp", headers=bearer(key["admin"] + "x")), "401"
    )
    assert client.get_model_config("digits_mlp", headers=bearer(key["reader"]))["name"]
    assert http_infer(client, "digits_mlp", key["digits"]).shape == (1, 10)
    assert "scope" in refused(lambda: http_infer(client, "digits_mlp", key["reader"]), "403")
    assert "cancer_gbt" in refused(lambda: http_infer(client, "cancer_gbt", key["digits"]), "403")
    assert http_infer(client, "digits_mlp", key["admin"]).shape == (1, 10)
    # health and metrics stay open; the v2 error shape holds for refusals
    assert client.is_server_ready()
    with httpx.Client(base_url=secured.base_url) as http:
        refusal = http.post("/v2/repository/models/digits_mlp/unload")
        assert refusal.status_code == 401 and set(refusal.json()) == {"error"}
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert 'infergate_auth_failures_total{reason="missing"}' in metrics.text
        v1 = http.post("/v1/models/cancer_gbt:predict", json={"instances": [[0.0] * 30]})
        assert v1.status_code == 401


def test_admin_actions_need_the_admin_scope_and_are_audited(
    secured: Gateway, keys: tuple[Path, dict[str, str]]
) -> None:
    key = keys[1]
    client = httpclient.InferenceServerClient(secured.http_url)
    refused(lambda: client.unload_model("keras_digits", headers=bearer(key["reader"])), "403")
    assert client.get_model_repository_index(headers=bearer(key["reader"]))
    client.unload_model("keras_digits", headers=bearer(key["admin"]))
    client.load_model("keras_digits", headers=bearer(key["admin"]))
    wait_until(
        lambda: (
            "audit admin key=admin action=unload model=keras_digits client=127.0.0.1"
            in secured.log()
        ),
        10,
        "the unload to be audited",
    )
    assert "audit auth-failure reason=scope key=reader action=unload" in secured.log()
    for plain in key.values():
        assert plain not in secured.log(), "a key reached the log"


def test_grpc_metadata_keys_scopes_and_models(
    secured: Gateway, keys: tuple[Path, dict[str, str]]
) -> None:
    key = keys[1]
    client = grpcclient.InferenceServerClient(secured.grpc_url)
    refused(lambda: client.get_model_config("digits_mlp"), "UNAUTHENTICATED")
    refused(lambda: grpc_infer(client, key["reader"]), "PERMISSION_DENIED")
    refused(
        lambda: client.unload_model("digits_mlp", headers=bearer(key["digits"])),
        "PERMISSION_DENIED",
    )
    refused(
        lambda: client.get_model_metadata("cancer_gbt", headers=bearer(key["digits"])),
        "PERMISSION_DENIED",
    )
    assert grpc_infer(client, key["digits"]).shape == (1, 10)
    assert client.get_model_repository_index(headers=bearer(key["reader"])).models
    assert client.is_server_live()  # health is open


def test_revoked_key_is_refused_after_the_file_changes(
    secured: Gateway, keys: tuple[Path, dict[str, str]]
) -> None:
    path, key = keys
    client = httpclient.InferenceServerClient(secured.http_url)
    assert http_infer(client, "digits_mlp", key["doomed"]).shape == (1, 10)
    assert revoke_key(path, "doomed")

    def refused_now() -> bool:
        try:
            client.get_server_metadata(headers=bearer(key["doomed"]))
        except InferenceServerException as error:
            return error.status() == "401"
        return False

    wait_until(refused_now, 20, "the revoked key to be refused")
    late = create_key(path, "late", ["read"])
    wait_until(
        lambda: client.get_server_metadata(headers=bearer(late))["name"],
        20,
        "a key added while serving to be accepted",
        ignore=(InferenceServerException,),
    )


def test_triton_restricted_api_flags(example_repo: Path) -> None:
    gateway = start_gateway(
        example_repo,
        "--http-restricted-api",
        "model-repository,metadata:admin-key=s3cret",
        "--grpc-restricted-protocol",
        "model-repository:admin-key=s3cret",
    )
    try:
        http = httpclient.InferenceServerClient(gateway.http_url)
        assert "admin-key" in refused(lambda: http.get_server_metadata(), "403")
        assert http.get_server_metadata(headers={"admin-key": "s3cret"})["name"]
        assert http_infer(http, "digits_mlp", "no key needed").shape == (1, 10)
        grpc_client = grpcclient.InferenceServerClient(gateway.grpc_url)
        refused(lambda: grpc_client.get_model_repository_index(), "PERMISSION_DENIED")
        assert grpc_client.get_model_repository_index(headers={"admin-key": "s3cret"}).models
        assert grpc_client.get_server_metadata().name  # metadata is open on gRPC here
    finally:
        gateway.stop()


def tls_context(ca: Path, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """Trusts only the test CA; presents the client certificate when given."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def tls_gateway(repo: Path, certs: Certificates, mutual: bool) -> Gateway:
    """A gateway serving HTTPS and gRPC TLS (requiring client certificates when ``mutual``)."""
    client_cert = (str(certs.client_cert), str(certs.client_key)) if mutual else None
    flags = ["--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key)]
    if mutual:
        flags += ["--tls-client-ca-file", str(certs.ca)]

    def ready(gateway: Gateway) -> bool:
        assert gateway.alive(), gateway.log()
        url = f"https://127.0.0.1:{gateway.http_port}/v2/health/ready"
        try:
            context = tls_context(certs.ca, client_cert)
            return httpx.get(url, verify=context, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    return start_gateway(repo, *flags, ready=ready)


def test_https_and_grpc_tls(example_repo: Path, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "tls")
    gateway = tls_gateway(example_repo, certs, mutual=False)
    try:
        url = f"https://127.0.0.1:{gateway.http_port}"
        with httpx.Client(base_url=url, verify=tls_context(certs.ca)) as https:
            assert https.get("/v2/models/digits_mlp/config").json()["name"] == "digits_mlp"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{gateway.http_port}/v2/health/ready", timeout=5)
        client = grpcclient.InferenceServerClient(
            gateway.grpc_url, ssl=True, root_certificates=str(certs.ca)
        )
        assert grpc_infer(client, "none").shape == (1, 10)
    finally:
        gateway.stop()


def test_mutual_tls_refuses_clients_without_a_certificate(
    example_repo: Path, tmp_path: Path
) -> None:
    certs = make_certificates(tmp_path / "mtls")
    client_cert = (str(certs.client_cert), str(certs.client_key))
    gateway = tls_gateway(example_repo, certs, mutual=True)
    try:
        url = f"https://127.0.0.1:{gateway.http_port}/v2/health/ready"
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=tls_context(certs.ca), timeout=5)
        with_cert = tls_context(certs.ca, client_cert)
        assert httpx.get(url, verify=with_cert, timeout=5).status_code == 200
        anonymous = grpcclient.InferenceServerClient(
            gateway.grpc_url, ssl=True, root_certificates=str(certs.ca)
        )
        refused(lambda: anonymous.is_server_live(), "UNAVAILABLE")
        mutual = grpcclient.InferenceServerClient(
            gateway.grpc_url,
            ssl=True,
            root_certificates=str(certs.ca),
            private_key=str(certs.client_key),
            certificate_chain=str(certs.client_cert),
        )
        assert mutual.is_server_live()
    finally:
        gateway.stop()


def test_grpc_stream_carries_the_key_to_every_request(
    secured: Gateway, keys: tuple[Path, dict[str, str]]
) -> None:
    key = keys[1]
    results: list[tuple[object, object]] = []
    client = grpcclient.InferenceServerClient(secured.grpc_url)
    client.start_stream(
        lambda result, error: results.append((result, error)), headers=bearer(key["digits"])
    )
    allowed = grpcclient.InferInput("input", [1, 64], "FP32")
    allowed.set_data_from_numpy(DIGITS)
    other = grpcclient.InferInput("input", [1, 30], "FP32")
    other.set_data_from_numpy(np.zeros((1, 30), dtype=np.float32))
    client.async_stream_infer("digits_mlp", [allowed], request_id="ok")
    client.async_stream_infer("cancer_gbt", [other], request_id="denied")
    wait_until(lambda: len(results) == 2, 30, "both streamed answers")
    client.stop_stream()
    answers = {
        (result.get_response().id if result is not None else "error"): error
        for result, error in results
    }
    assert answers.get("ok") is None, answers
    errors = [str(error) for _, error in results if error is not None]
    assert len(errors) == 1 and "may not use model 'cancer_gbt'" in errors[0]
    anonymous = grpcclient.InferenceServerClient(secured.grpc_url)
    failures: list[InferenceServerException] = []
    anonymous.start_stream(lambda result, error: failures.append(error))
    # the refusal may close the stream before this request is queued; the callback gets it anyway
    with contextlib.suppress(InferenceServerException):
        anonymous.async_stream_infer("digits_mlp", [allowed])
    wait_until(lambda: failures, 30, "the stream without a key to be refused")
    anonymous.stop_stream()
    assert "UNAUTHENTICATED" in str(failures[0].status()), failures[0]
