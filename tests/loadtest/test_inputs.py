"""Inputs generated from v2 metadata, token batches and the cache-mix pool (no server needed)."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest._inputs import CLS, SEP, InputPool, make_inputs, make_token_inputs
from loadtest._model import ModelSpec
from loadtest._options import grpc_target, parse_users

IMAGE_METADATA = {
    "name": "cnn",
    "versions": ["1", "2"],
    "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, -1, -1]}],
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
}
TOKENS_METADATA = {
    "name": "minilm",
    "versions": ["1"],
    # gRPC's JSON spells int64 dims as strings
    "inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": ["-1", "-1"]},
        {"name": "attention_mask", "datatype": "INT64", "shape": ["-1", "-1"]},
        {"name": "token_type_ids", "datatype": "INT32", "shape": ["-1", "-1"]},
    ],
    "outputs": [{"name": "embedding", "datatype": "FP32", "shape": ["-1", "384"]}],
}


def test_spec_reads_batching_from_config_or_guesses_it() -> None:
    batched = ModelSpec.from_v2(IMAGE_METADATA, {"max_batch_size": 8})
    assert batched.batched and batched.version == "2"
    assert batched.inputs[0].shape == (-1, 1, -1, -1)
    assert ModelSpec.from_v2(TOKENS_METADATA, None).batched  # leading -1 on every input
    assert not ModelSpec.from_v2(IMAGE_METADATA, {"max_batch_size": 0}).batched


def test_dynamic_axes_get_rows_and_seq_len() -> None:
    spec = ModelSpec.from_v2(IMAGE_METADATA, {"max_batch_size": 8})
    inputs = make_inputs(spec, rows=3, seq_len=16, rng=np.random.default_rng(0))
    assert inputs["image"].shape == (3, 1, 16, 16) and inputs["image"].dtype == np.float32
    capped = make_inputs(spec, rows=100, seq_len=4, rng=np.random.default_rng(0))
    assert capped["image"].shape[0] == 8  # never more rows than max_batch_size


def test_token_inputs_are_in_vocab_with_full_mask() -> None:
    spec = ModelSpec.from_v2(TOKENS_METADATA, {"max_batch_size": 64})
    inputs = make_inputs(spec, rows=2, seq_len=16, rng=np.random.default_rng(0))
    ids = inputs["input_ids"]
    assert ids.shape == (2, 16) and ids.dtype == np.int64
    assert (ids[:, 0] == CLS).all() and (ids[:, -1] == SEP).all()
    assert ids.min() >= 0 and ids.max() < 30522
    assert (inputs["attention_mask"] == 1).all()
    assert (inputs["token_type_ids"] == 0).all() and inputs["token_type_ids"].dtype == np.int32


def test_texts_have_drawn_lengths_and_padding_is_masked() -> None:
    spec = ModelSpec.from_v2(TOKENS_METADATA, {"max_batch_size": 64})
    inputs = make_token_inputs(spec, 16, 8, 64, np.random.default_rng(1))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    lengths = mask.sum(axis=1)
    assert ids.shape[0] == 16 and ids.shape[1] == lengths.max()
    assert lengths.min() >= 8 and lengths.max() <= 64 and len(set(lengths.tolist())) > 1
    for row, length in zip(ids, lengths, strict=True):
        assert row[0] == CLS and row[length - 1] == SEP
        assert (row[length:] == 0).all()


def test_pool_repeats_inputs_at_the_hit_ratio() -> None:
    spec = ModelSpec.from_v2(IMAGE_METADATA, {"max_batch_size": 8})
    pool = InputPool(spec, rows=1, seq_len=4, size=5)
    rng = np.random.default_rng(2)
    draws = [pool.draw(0.7, rng) for _ in range(2000)]
    hits = [inputs for inputs, repeated in draws if repeated]
    assert 0.65 < len(hits) / len(draws) < 0.75
    assert all(any(inputs is entry for entry in pool.pool) for inputs in hits)
    fresh = [inputs for inputs, repeated in draws if not repeated]
    pooled = {entry["image"].tobytes() for entry in pool.pool}
    assert not any(inputs["image"].tobytes() in pooled for inputs in fresh)
    assert not any(repeated for _, repeated in (pool.draw(0.0, rng) for _ in range(100)))


def test_option_parsers() -> None:
    assert parse_users("1, 8,32") == [1, 8, 32]
    with pytest.raises(ValueError):
        parse_users("0,4")
    assert grpc_target("http://gpu-1:8000", "") == "gpu-1:8001"
    assert grpc_target("http://gpu-1:8000", "grpc://other:9001") == "other:9001"
