"""Tokenizers in the repository: tokenizer.json beside the model, text requests over v2 in-process,
per-text caching and the loading rules (real tokenizers, real ONNX Runtime sessions)."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2

from service.dataplane.plane import DataPlane
from service.errors import BadRequest
from service.messages import InferRequest, ItemsRequest
from service.models.sources import parse_config
from service.models.tokenizer import TextTokenizer, TokenizerOptions
from service.observability.metrics import REJECTED
from service.settings import Settings
from tests.service.dataplane.test_batching import copy_model

MODEL = "minilm_embed"
INT8 = "minilm_embed_int8"
TEXTS = [
    "The gateway batches concurrent requests.",
    "Redis caches repeated results.",
    "hello",
    "Embeddings map sentences to points on a sphere, which retrieval then searches.",
]


def minilm_copy(example_repo: Path, target: Path, edit=None) -> Path:
    return copy_model(example_repo, MODEL, target, edit)


def hf_tokenizer():
    from transformers import AutoTokenizer

    from converters.example_models import minilm_dir

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def text_request(texts: list[str], version: str = "1", **parameters) -> InferRequest:
    array = np.array([[t.encode()] for t in texts], dtype=np.object_)
    return InferRequest(MODEL, version, {"text": array}, {"text": "BYTES"}, parameters=parameters)


def token_request(ids: list[int], version: str = "1") -> InferRequest:
    row = np.array([ids], dtype=np.int64)
    inputs = {
        "input_ids": row,
        "attention_mask": np.ones_like(row),
        "token_type_ids": np.zeros_like(row),
    }
    return InferRequest(MODEL, version, inputs, {name: "INT64" for name in inputs})


async def started(repo: Path, **settings) -> DataPlane:
    dataplane = DataPlane(Settings(model_repo=repo, grpc_port=0, **settings))
    await dataplane.start()
    return dataplane


def stats(dataplane: DataPlane, version: str = "1") -> dict:
    return dataplane.local_statistics(MODEL, version)["model_stats"][0]


@pytest.fixture(scope="module")
def minilm_tokenizer(example_repo: Path) -> TextTokenizer:
    config = parse_config(example_repo / MODEL / "config.pbtxt")
    folders = [example_repo / MODEL / "1", example_repo / MODEL]
    tokenizer = TextTokenizer.load(
        folders, config, {"input_ids", "attention_mask", "token_type_ids"}
    )
    assert tokenizer is not None
    return tokenizer


def test_options_come_from_the_config_and_bad_ones_fail_the_load() -> None:
    config = model_config_pb2.ModelConfig()
    assert TokenizerOptions.from_config(config) == TokenizerOptions("text", 512, "right", 0)
    config.parameters["infergate.tokenizer.max_length"].string_value = "128"
    config.parameters["infergate.tokenizer.truncation_side"].string_value = "left"
    config.parameters["infergate.tokenizer.text_input"].string_value = "query"
    assert TokenizerOptions.from_config(config) == TokenizerOptions("query", 128, "left", 0)
    config.parameters["infergate.tokenizer.truncation_side"].string_value = "middle"
    with pytest.raises(ValueError, match="truncation_side must be 'right' or 'left'"):
        TokenizerOptions.from_config(config)
    config.parameters["infergate.tokenizer.truncation_side"].string_value = "right"
    config.parameters["infergate.tokenizer.max_length"].string_value = "-4"
    with pytest.raises(ValueError, match="max_length must be a non-negative integer"):
        TokenizerOptions.from_config(config)


def test_example_config_declares_text_for_the_gateway_only(example_repo: Path) -> None:
    config = parse_config(example_repo / MODEL / "config.pbtxt")
    assert [i.name for i in config.input] == ["input_ids", "attention_mask", "token_type_ids"]
    options = TokenizerOptions.from_config(config)
    assert options == TokenizerOptions("text", 256, "right", 0)  # sentence-transformers' 256
    assert all((example_repo / m / "1" / "tokenizer.json").is_file() for m in (MODEL, INT8))


def test_encoding_equals_the_hugging_face_tokenizer(minilm_tokenizer: TextTokenizer) -> None:
    reference = hf_tokenizer()
    long_text = " ".join(["retrieval"] * 400)
    items = minilm_tokenizer.encode_sync([*TEXTS, long_text, ""], truncate=True)
    for text, item in zip([*TEXTS, long_text, ""], items):
        want = reference(text, truncation=True, max_length=256)
        assert item.ids.tolist() == want["input_ids"]
        assert item.type_ids.tolist() == want["token_type_ids"]
    assert items[len(TEXTS)].length == 256 and items[-1].ids.tolist() == [101, 102]


def test_long_text_is_rejected_without_truncation(minilm_tokenizer: TextTokenizer) -> None:
    long_text = "word " * 300
    with pytest.raises(BadRequest, match="input 1 is longer than the model's 256 tokens") as info:
        minilm_tokenizer.encode_sync(["short", long_text], truncate=False)
    assert info.value.param == "input" and info.value.code == "context_length_exceeded"
    assert minilm_tokenizer.encode_sync(["short"], truncate=False)[0].length == 3


def test_client_token_arrays_are_checked_and_truncated(minilm_tokenizer: TextTokenizer) -> None:
    item = minilm_tokenizer.from_ids(0, [101, 7592, 102], truncate=True)
    assert item.ids.tolist() == [101, 7592, 102] and item.type_ids.tolist() == [0, 0, 0]
    assert minilm_tokenizer.from_ids(0, list(range(1000, 1300)), truncate=True).length == 256
    with pytest.raises(BadRequest, match="input 2 is longer"):
        minilm_tokenizer.from_ids(2, list(range(1000, 1300)), truncate=False)
    with pytest.raises(BadRequest, match="input 1 has a token id outside the vocabulary 0..30521"):
        minilm_tokenizer.from_ids(1, [101, 30522], truncate=True)
    with pytest.raises(BadRequest, match="input 0 is an empty token array"):
        minilm_tokenizer.from_ids(0, [], truncate=True)


async def test_encoding_runs_off_the_event_loop(example_repo: Path) -> None:
    threads: list[int] = []

    class Recording(TextTokenizer):
        def encode_sync(self, texts, truncate):
            threads.append(threading.get_ident())
            return super().encode_sync(texts, truncate)

    rust = Tokenizer.from_file(str(example_repo / MODEL / "1" / "tokenizer.json"))
    recording = Recording(rust, TokenizerOptions(max_length=256))
    items = await recording.encode(TEXTS, truncate=True)
    assert len(items) == len(TEXTS)
    assert threads and threads[0] != threading.get_ident()


def test_left_truncation_keeps_the_end(example_repo: Path) -> None:
    config = parse_config(example_repo / MODEL / "config.pbtxt")
    config.parameters["infergate.tokenizer.truncation_side"].string_value = "left"
    config.parameters["infergate.tokenizer.max_length"].string_value = "8"
    tokenizer = TextTokenizer.load([example_repo / MODEL / "1"], config, {"input_ids"})
    assert tokenizer is not None
    ids = tokenizer.encode_sync(["one two three four five six seven eight nine ten"], True)[0]
    reference = hf_tokenizer()
    words = reference("one two three four five six seven eight nine ten")["input_ids"]
    assert ids.length == 8 and ids.ids.tolist()[-2:] == words[-2:]


def test_a_tokenizer_needs_token_inputs_and_a_free_text_name(example_repo: Path) -> None:
    config = parse_config(example_repo / MODEL / "config.pbtxt")
    folders = [example_repo / MODEL / "1"]
    with pytest.raises(ValueError, match="are not input_ids plus any of"):
        TextTokenizer.load(folders, config, {"input_ids", "pixels"})
    config.parameters["infergate.tokenizer.text_input"].string_value = "input_ids"
    with pytest.raises(ValueError, match="text input 'input_ids' is also a graph input"):
        TextTokenizer.load(folders, config, {"input_ids"})
    assert TextTokenizer.load([example_repo / "digits_mlp"], config, {"input_ids"}) is None


async def test_text_over_v2_equals_token_ids(example_repo: Path, tmp_path: Path) -> None:
    repo = minilm_copy(example_repo, tmp_path)
    session = ort.InferenceSession(str(repo / MODEL / "1" / "model.onnx"))
    reference = hf_tokenizer()
    dataplane = await started(repo, cache_enabled=False)
    try:
        response = await dataplane.infer(text_request(TEXTS))
        got = response.outputs["sentence_embedding"]
        assert got.shape == (len(TEXTS), 384)
        for row, text in zip(got, TEXTS):
            enc = reference([text], return_tensors="np")
            feeds = {k: enc[k].astype(np.int64) for k in enc}
            want = session.run(["sentence_embedding"], feeds)[0][0]
            np.testing.assert_allclose(row, want, atol=2e-5)
        tokens = await dataplane.infer(token_request(reference(TEXTS[0])["input_ids"]))
        np.testing.assert_allclose(tokens.outputs["sentence_embedding"][0], got[0], atol=2e-5)
        after = stats(dataplane)
        assert after["inference_stats"]["success"]["count"] == 2
        assert after["inference_count"] == len(TEXTS) + 1
    finally:
        await dataplane.close()


async def test_per_text_cache_computes_only_new_texts(example_repo: Path, tmp_path: Path) -> None:
    repo = minilm_copy(example_repo, tmp_path)
    dataplane = await started(repo, cache_enabled=True)
    try:
        first = [f"passage number {i} about topic {i % 7}" for i in range(32)]
        await dataplane.infer(text_request(first))
        assert stats(dataplane)["inference_count"] == 32
        second = first[:30] + ["a new passage", "another new passage"]
        response = await dataplane.infer(text_request(second))
        after = stats(dataplane)
        assert after["inference_count"] == 34  # only the 2 new texts ran
        cache = after["inference_stats"]
        assert cache["cache_hit"]["count"] == 30 and cache["cache_miss"]["count"] == 34
        again = await dataplane.infer(text_request(first[:2]))
        np.testing.assert_array_equal(
            again.outputs["sentence_embedding"], response.outputs["sentence_embedding"][:2]
        )
        # identical texts in flight at once run once
        same = await asyncio.gather(
            *(dataplane.infer(text_request(["fresh text"])) for _ in range(5))
        )
        assert stats(dataplane)["inference_count"] == 35 and len(same) == 5
    finally:
        await dataplane.close()


async def test_text_request_errors(example_repo: Path, tmp_path: Path) -> None:
    repo = minilm_copy(example_repo, tmp_path)
    dataplane = await started(repo, cache_enabled=False, max_items_per_request=4)
    try:
        mixed = text_request(["x"])
        mixed.inputs["input_ids"] = np.ones((1, 3), dtype=np.int64)
        mixed.datatypes["input_ids"] = "INT64"
        cases = [
            (mixed, "input 'text' replaces the token inputs of model 'minilm_embed'"),
            (text_request(["a"] * 5), "a request carries 1 to 4 inputs, got 5"),
            (text_request(["word " * 300], truncate=False), "input 0 is longer than"),
            (text_request(["x"], truncate="yes"), "'truncate' must be true or false"),
        ]
        wrong_type = text_request(["x"])
        wrong_type.datatypes["text"] = "INT64"
        cases.append((wrong_type, "input 'text' expected datatype BYTES, got INT64"))
        wrong_shape = text_request(["x", "y"])
        wrong_shape.inputs["text"] = wrong_shape.inputs["text"].reshape(1, 2)
        cases.append((wrong_shape, r"input 'text' expected shape \[-1,1\], got \[1, 2\]"))
        not_utf8 = text_request(["x"])
        not_utf8.inputs["text"][0, 0] = b"\xff\xfe"
        cases.append((not_utf8, "input 'text': element 0 is not UTF-8 text"))
        for request, message in cases:
            with pytest.raises(BadRequest, match=message):
                await dataplane.infer(request)
        assert stats(dataplane)["inference_count"] == 0
        assert stats(dataplane)["inference_stats"]["fail"]["count"] == len(cases)
    finally:
        await dataplane.close()


async def test_token_limit_per_request(example_repo: Path, tmp_path: Path) -> None:
    repo = minilm_copy(example_repo, tmp_path)
    dataplane = await started(repo, cache_enabled=False, max_tokens_per_request=20)
    try:
        await dataplane.infer(text_request(["short text"]))
        with pytest.raises(BadRequest, match="have 24 tokens; the limit is 20"):
            await dataplane.infer(
                text_request(["one two three four five six seven eight"] * 2 + ["a b"])
            )
    finally:
        await dataplane.close()


async def test_repository_without_tokenizer_takes_token_ids_only(
    example_repo: Path, tmp_path: Path
) -> None:
    repo = minilm_copy(example_repo, tmp_path)
    (repo / MODEL / "1" / "tokenizer.json").unlink()
    dataplane = await started(repo, cache_enabled=False)
    try:
        with pytest.raises(BadRequest, match="unexpected inference input 'text'"):
            await dataplane.infer(text_request(["x"]))
        ok = await dataplane.infer(token_request([101, 7592, 102]))
        assert ok.outputs["sentence_embedding"].shape == (1, 384)
    finally:
        await dataplane.close()


async def test_a_broken_tokenizer_makes_the_model_unavailable(
    example_repo: Path, tmp_path: Path
) -> None:
    repo = minilm_copy(example_repo, tmp_path)
    (repo / MODEL / "1" / "tokenizer.json").write_text("{not json")
    dataplane = await started(repo, cache_enabled=False)
    try:
        rows = await dataplane.repository_index()
        states = {row.name: (row.state, row.reason) for row in rows}
        state, reason = states[MODEL]
        assert state == "UNAVAILABLE" and "is not a Hugging Face tokenizer" in reason
    finally:
        await dataplane.close()


async def test_a_text_request_is_admitted_as_a_whole(example_repo, tmp_path) -> None:
    """Admitted item by item, the items of one request would queue behind each other and shed
    themselves on a budget shorter than their own batches; admitted whole, an idle model takes
    the request, and one refusal counts once."""
    shutil.copytree(example_repo / MODEL, tmp_path / MODEL)
    dataplane = await started(tmp_path, max_queue_wait_ms=1, cache_enabled=False)
    try:
        before = REJECTED.labels(MODEL, "predicted_wait")._value.get()
        texts = [f"text number {i}" for i in range(64)]  # two batches of 32
        response = await dataplane.infer(text_request(texts))
        assert response.outputs["sentence_embedding"].shape == (64, 384)
        items = ItemsRequest(MODEL, "1", texts)
        assert (await dataplane.infer_items(items)).outputs["sentence_embedding"].shape[0] == 64
        assert REJECTED.labels(MODEL, "predicted_wait")._value.get() == before
        assert stats(dataplane)["inference_stats"]["success"]["count"] == 2
    finally:
        await dataplane.close()
