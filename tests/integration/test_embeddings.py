"""Embeddings end to end: a real ``infergate serve`` process, the official ``openai`` client,
tritonclient over HTTP and gRPC with a BYTES text input, sentence-transformers as the reference."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.helpers import Gateway, start_gateway

MODEL = "minilm_embed"
INT8 = "minilm_embed_int8"
TEXTS = [
    "The gateway batches concurrent requests.",
    "A cat sleeps on the warm windowsill.",
    "hello",
    "Stock prices fell sharply on Tuesday after the report.",
    # longer than MiniLM's 256 tokens: both sides cut it the same way
    " ".join(f"retrieval passage {i} about vector search and caching" for i in range(60)),
]


@pytest.fixture(scope="module")
def embed_gateway(example_repo: Path) -> Iterator[Gateway]:
    env = {
        "INFERGATE_CACHE_ENABLED": "true",  # the in-process cache (no Redis)
        "INFERGATE_MAX_ITEMS_PER_REQUEST": "64",
        "INFERGATE_MAX_TOKENS_PER_REQUEST": "6000",
        "HF_HUB_OFFLINE": "1",
    }
    server = start_gateway(example_repo, env=env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """sentence-transformers' embeddings of TEXTS, in-process."""
    from sentence_transformers import SentenceTransformer

    from converters.example_models import minilm_dir

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    return np.asarray(model.encode(TEXTS, normalize_embeddings=True), dtype=np.float32)


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    return np.sum(got * want, axis=1)


def model_stats(gateway: Gateway, version: str = "1") -> dict:
    url = f"{gateway.base_url}/v2/models/{MODEL}/versions/{version}/stats"
    (entry,) = httpx.get(url).json()["model_stats"]
    return entry


def as_array(data: list, encoding: str | None) -> np.ndarray:
    if encoding == "base64":  # asked for explicitly: the client hands the strings over as they are
        rows = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in data]
        return np.array(rows, dtype=np.float32)
    return np.array([d.embedding for d in data], dtype=np.float32)


# None: the client's default, which asks for base64 and decodes it itself
@pytest.mark.parametrize("encoding", [None, "float", "base64"], ids=["default", "float", "b64"])
def test_official_client_equals_sentence_transformers(
    embed_gateway: Gateway, reference: np.ndarray, encoding: str | None
) -> None:
    client = openai.OpenAI(base_url=f"{embed_gateway.base_url}/v1", api_key="x")
    options = {} if encoding is None else {"encoding_format": encoding}
    response = client.embeddings.create(model=f"{MODEL}/1", input=TEXTS, **options)
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    got = as_array(response.data, encoding)
    assert got.shape == (len(TEXTS), 384)
    assert cosines(got, reference).min() >= 0.9999
    assert response.usage.prompt_tokens == response.usage.total_tokens
    assert 256 + 4 * 3 < response.usage.prompt_tokens <= 256 * len(TEXTS)
    latest = client.embeddings.create(model=MODEL, input=TEXTS, **options)  # no version
    assert cosines(as_array(latest.data, encoding), reference).min() >= 0.9999
    int8 = client.embeddings.create(model=INT8, input=TEXTS, **options)
    assert cosines(as_array(int8.data, encoding), reference).min() >= 0.95


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_text_over_v2_http(embed_gateway: Gateway, reference: np.ndarray, binary: bool) -> None:
    text = np.array([[t.encode()] for t in TEXTS], dtype=np.object_)
    infer_input = httpclient.InferInput("text", list(text.shape), "BYTES")
    infer_input.set_data_from_numpy(text, binary_data=binary)
    with httpclient.InferenceServerClient(embed_gateway.http_url) as client:
        result = client.infer(MODEL, [infer_input], model_version="1")
        got = result.as_numpy("sentence_embedding")
    assert got.shape == (len(TEXTS), 384)
    assert cosines(got, reference).min() >= 0.9999


def test_text_over_grpc(embed_gateway: Gateway, reference: np.ndarray) -> None:
    text = np.array([[t.encode()] for t in TEXTS], dtype=np.object_)
    infer_input = grpcclient.InferInput("text", list(text.shape), "BYTES")
    infer_input.set_data_from_numpy(text)
    with grpcclient.InferenceServerClient(embed_gateway.grpc_url) as client:
        got = client.infer(MODEL, [infer_input], model_version="1").as_numpy("sentence_embedding")
        with pytest.raises(grpcclient.InferenceServerException) as info:
            long_text = np.array([["word " * 300]], dtype=np.object_)
            bad = grpcclient.InferInput("text", [1, 1], "BYTES")
            bad.set_data_from_numpy(long_text)
            truncate = {"truncate": False}
            client.infer(MODEL, [bad], model_version="1", parameters=truncate)
    assert cosines(got, reference).min() >= 0.9999
    assert "INVALID_ARGUMENT" in str(info.value.status())
    assert "longer than the model's 256 tokens" in info.value.message()


def test_token_ids_keep_working(embed_gateway: Gateway, reference: np.ndarray) -> None:
    from transformers import AutoTokenizer

    from converters.example_models import minilm_dir

    ids = AutoTokenizer.from_pretrained(str(minilm_dir()))(TEXTS[1])["input_ids"]
    row = np.array([ids], dtype=np.int64)
    arrays = {
        "input_ids": row,
        "attention_mask": np.ones_like(row),
        "token_type_ids": np.zeros_like(row),
    }
    inputs = []
    for name, array in arrays.items():
        infer_input = httpclient.InferInput(name, list(array.shape), "INT64")
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    with httpclient.InferenceServerClient(embed_gateway.http_url) as client:
        got = client.infer(MODEL, inputs, model_version="1").as_numpy("sentence_embedding")
    assert cosines(got, reference[1:2]).min() >= 0.9999
    openai_ids = openai.OpenAI(base_url=f"{embed_gateway.base_url}/v1", api_key="x")
    by_ids = openai_ids.embeddings.create(model=f"{MODEL}/1", input=[ids], encoding_format="float")
    assert cosines(np.array([by_ids.data[0].embedding]), reference[1:2]).min() >= 0.9999


def test_per_text_cache_computes_only_new_texts(embed_gateway: Gateway) -> None:
    url = f"{embed_gateway.base_url}/v1/embeddings"
    first = [f"cached passage {i}: the quick brown fox, take {i}" for i in range(32)]
    second = first[:30] + ["an unseen passage", "another unseen passage"]
    before = model_stats(embed_gateway)
    response = httpx.post(url, json={"model": f"{MODEL}/1", "input": first}, timeout=60)
    assert response.status_code == 200, response.text
    middle = model_stats(embed_gateway)
    assert middle["inference_count"] - before["inference_count"] == 32
    response = httpx.post(url, json={"model": f"{MODEL}/1", "input": second}, timeout=60)
    assert response.status_code == 200, response.text
    after = model_stats(embed_gateway)
    assert after["inference_count"] - middle["inference_count"] == 2
    assert after["execution_count"] - middle["execution_count"] <= 2
    hits = after["inference_stats"]["cache_hit"]["count"]
    assert hits - middle["inference_stats"]["cache_hit"]["count"] == 30
    success = after["inference_stats"]["success"]["count"]
    assert success - before["inference_stats"]["success"]["count"] == 2


ERRORS = [
    ({"model": MODEL, "input": []}, 400, "input"),
    ({"model": "missing_model", "input": "x"}, 404, "model"),
    ({"model": "digits_mlp", "input": "x"}, 400, "model"),
    ({"model": MODEL, "input": ["x"] * 65}, 400, "input"),
    ({"model": MODEL, "input": ["word " * 250] * 30}, 400, "input"),  # 7560 tokens > 6000
    ({"model": MODEL, "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ({"model": MODEL, "input": "x", "dimensions": 128}, 400, "dimensions"),
    ({"model": MODEL, "input": "word " * 300, "truncate": False}, 400, "input"),
]


@pytest.mark.parametrize(("body", "status", "param"), ERRORS)
def test_errors_and_limits(embed_gateway: Gateway, body: dict, status: int, param: str) -> None:
    before = model_stats(embed_gateway)["inference_count"]
    response = httpx.post(f"{embed_gateway.base_url}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"]
    assert model_stats(embed_gateway)["inference_count"] == before  # nothing ran


def test_models_list(embed_gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=f"{embed_gateway.base_url}/v1", api_key="x")
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL, f"{MODEL}/1", INT8, f"{INT8}/1"]
    assert client.models.retrieve(MODEL).owned_by == "infergate"
