"""The OpenAI front end in-process: /v1/embeddings and /v1/models through the real REST app, a real
data plane and ONNX Runtime, spoken to by httpx and by the official ``openai`` client."""

from __future__ import annotations

import base64
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from google.protobuf import text_format

from service.dataplane.plane import DataPlane
from service.errors import BadRequest, NotFound, Overloaded
from service.frontends.rest.app import build_app
from service.frontends.rest.openai import (
    decode_embeddings,
    decode_input,
    error_body,
    fit_dimensions,
)
from service.models.sources import parse_config
from service.settings import Settings

MODEL = "minilm_embed"


@pytest.fixture
async def app_client(example_repo: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    shutil.copytree(example_repo / MODEL, tmp_path / MODEL)
    shutil.copytree(example_repo / "digits_mlp", tmp_path / "digits_mlp")
    config = parse_config(tmp_path / MODEL / "config.pbtxt")
    config.parameters["infergate.embedding.truncatable"].string_value = "true"
    (tmp_path / MODEL / "config.pbtxt").write_text(text_format.MessageToString(config))
    settings = Settings(
        model_repo=tmp_path, grpc_port=0, cache_enabled=True, max_items_per_request=8
    )
    dataplane = DataPlane(settings)
    await dataplane.start()
    transport = httpx.ASGITransport(app=build_app(dataplane))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client
    await dataplane.close()


def test_input_forms() -> None:
    assert decode_input("one") == ["one"]
    assert decode_input(["a", "b"]) == ["a", "b"]
    assert decode_input([101, 7592, 102]) == [[101, 7592, 102]]
    assert decode_input([[101, 102], [101, 7592, 102]]) == [[101, 102], [101, 7592, 102]]
    for bad in ([], None, 3, ["a", 1], [[1, "x"]], [True]):
        with pytest.raises(BadRequest) as info:
            decode_input(bad)
        assert info.value.param == "input"


def test_request_fields_are_checked() -> None:
    request, encoding, dimensions = decode_embeddings(
        {"model": "m/2", "input": "x", "encoding_format": "base64", "user": "u", "truncate": False}
    )
    assert (request.model_name, request.model_version, request.truncate) == ("m", "2", False)
    assert (encoding, dimensions) == ("base64", None)
    cases = [
        ({"input": "x"}, "model"),
        ({"model": "m/two", "input": "x"}, "model"),
        ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "m", "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": "m", "input": "x", "user": 7}, "user"),
        ({"model": "m", "input": "x", "truncate": "no"}, "truncate"),
    ]
    for body, param in cases:
        with pytest.raises(BadRequest) as info:
            decode_embeddings(body)
        assert info.value.param == param, body


def test_error_shape_and_types() -> None:
    import orjson

    body = orjson.loads(error_body(BadRequest("bad", param="input")))
    assert body == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "input", "code": None}
    }
    missing = orjson.loads(error_body(NotFound("no such model", param="model")))["error"]
    assert missing["code"] == "model_not_found" and missing["type"] == "invalid_request_error"
    assert orjson.loads(error_body(Overloaded("busy")))["error"]["type"] == "server_error"


def test_shortened_embeddings_are_normalized_again() -> None:
    rows = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    cut = fit_dimensions(rows, 4)
    assert cut.shape == (3, 4) and cut.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(cut[0] / cut[0, 0], rows[0, :4] / rows[0, 0], rtol=1e-5)
    assert fit_dimensions(rows, None) is rows


async def test_float_and_base64_agree(app_client: httpx.AsyncClient) -> None:
    texts = ["A cat sleeps on the warm windowsill.", "Stock prices fell sharply."]
    floats = await app_client.post("/v1/embeddings", json={"model": MODEL, "input": texts})
    assert floats.status_code == 200, floats.text
    body = floats.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 384 for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 4
    encoded = await app_client.post(
        "/v1/embeddings", json={"model": MODEL, "input": texts, "encoding_format": "base64"}
    )
    for as_float, as_b64 in zip(body["data"], encoded.json()["data"]):
        decoded = np.frombuffer(base64.b64decode(as_b64["embedding"]), dtype="<f4")
        np.testing.assert_allclose(decoded, as_float["embedding"], rtol=1e-6)


async def test_official_client_in_process(app_client: httpx.AsyncClient) -> None:
    client = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="x", http_client=app_client)
    # no encoding_format: the client asks for base64 and decodes it itself
    default = await client.embeddings.create(model=f"{MODEL}/1", input=["hello world", "hello"])
    floats = await client.embeddings.create(
        model=f"{MODEL}/1", input="hello world", encoding_format="float"
    )
    assert len(default.data) == 2 and default.usage.prompt_tokens == 4 + 3
    np.testing.assert_allclose(default.data[0].embedding, floats.data[0].embedding, atol=1e-6)
    ids = [101, 7592, 2088, 102]  # [CLS] hello world [SEP]
    by_ids = await client.embeddings.create(model=f"{MODEL}/1", input=ids, encoding_format="float")
    np.testing.assert_allclose(by_ids.data[0].embedding, floats.data[0].embedding, atol=1e-6)
    assert by_ids.usage.prompt_tokens == 4
    short = await client.embeddings.create(model=f"{MODEL}/1", input="hello world", dimensions=64)
    assert len(short.data[0].embedding) == 64
    assert abs(float(np.linalg.norm(short.data[0].embedding)) - 1.0) < 1e-5
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL, f"{MODEL}/1"]
    with pytest.raises(openai.NotFoundError) as info:
        await client.embeddings.create(model="nope", input="x")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.embeddings.create(model=MODEL, input="x", dimensions=500)
    assert bad.value.param == "dimensions"


async def test_embeddings_share_the_model_statistics(app_client: httpx.AsyncClient) -> None:
    texts = [f"text number {i}" for i in range(6)]
    await app_client.post("/v1/embeddings", json={"model": f"{MODEL}/1", "input": texts})
    await app_client.post("/v1/embeddings", json={"model": f"{MODEL}/1", "input": texts[:5]})
    stats = (await app_client.get(f"/v2/models/{MODEL}/versions/1/stats")).json()
    (entry,) = stats["model_stats"]
    assert entry["inference_stats"]["success"]["count"] == 2
    assert entry["inference_count"] == 6
    assert entry["inference_stats"]["cache_hit"]["count"] == 5
    metrics = (await app_client.get("/metrics")).text
    assert f'nv_inference_request_success{{model="{MODEL}",version="1"}} 2\n' in metrics


ERRORS = [
    ({"model": MODEL}, 400, "input", "'input' must be a string"),
    (
        {"model": "nope", "input": "x"},
        404,
        "model",
        "Request for unknown model: 'nope' is not found",
    ),
    ({"model": f"{MODEL}/9", "input": "x"}, 404, "model", "version 9 is not found"),
    ({"model": "digits_mlp", "input": "x"}, 400, "model", "has no tokenizer"),
    ({"model": MODEL, "input": ["x"] * 9}, 400, "input", "1 to 8 inputs, got 9"),
    ({"model": MODEL, "input": "w " * 300, "truncate": False}, 400, "input", "longer than"),
    ({"model": MODEL, "input": [[101, 99999]]}, 400, "input", "outside the vocabulary"),
    ({"model": MODEL, "input": "x", "dimensions": 385}, 400, "dimensions", "more than"),
]


@pytest.mark.parametrize(("body", "status", "param", "message"), ERRORS)
async def test_errors_in_openai_shape(
    app_client: httpx.AsyncClient, body: dict, status: int, param: str, message: str
) -> None:
    response = await app_client.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and message in error["message"]
    assert error["type"] == "invalid_request_error"


async def test_route_and_body_errors_in_openai_shape(app_client: httpx.AsyncClient) -> None:
    malformed = await app_client.post("/v1/embeddings", content=b"{nope")
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]["message"]
    unknown = await app_client.post("/v1/chat/completions", json={})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "invalid_request_error"
    wrong_method = await app_client.get("/v1/embeddings")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    retrieved = await app_client.get(f"/v1/models/{MODEL}/1")
    assert retrieved.json() == {
        "id": f"{MODEL}/1",
        "object": "model",
        "created": 0,
        "owned_by": "infergate",
    }
    missing = await app_client.get("/v1/models/digits_mlp")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    # TF-serving's v1 predict keeps the v2 error shape
    predict = await app_client.post("/v1/models/nope:predict", json={"instances": [[1.0]]})
    assert predict.status_code == 404 and isinstance(predict.json()["error"], str)
