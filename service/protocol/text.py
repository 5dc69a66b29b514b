"""Requests of independent texts (or token arrays): decoding, limits and one request per item.

A model with a tokenizer takes its text input (BYTES, shape [-1, 1] or [-1]) instead of the token
inputs over REST and gRPC, and /v1/embeddings sends the same items. Each item becomes its own
one-row token request, so each is validated, cached, coalesced and batched on its own: a request
of 32 texts of which 30 were seen before runs the model for 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.errors import BadRequest
from service.messages import Array, InferRequest
from service.models.tokenizer import TextTokenizer, TokenizedItem
from service.models.version import ModelVersion


def tokenizer_of(model: ModelVersion) -> TextTokenizer:
    """The model's tokenizer; 400 for a model that takes token ids only."""
    if model.tokenizer is None:
        raise BadRequest(
            f"model '{model.name}' has no tokenizer, so it takes no text "
            "(put a tokenizer.json beside it)",
            param="model",
        )
    return model.tokenizer


def is_text_request(model: ModelVersion, request: InferRequest) -> bool:
    return model.tokenizer is not None and model.tokenizer.options.text_input in request.inputs


def request_texts(model: ModelVersion, request: InferRequest) -> list[str]:
    """The texts of a v2 request that sends the text input in place of the token inputs."""
    name = tokenizer_of(model).options.text_input
    others = sorted(set(request.inputs) - {name})
    if others:
        raise BadRequest(
            f"input '{name}' replaces the token inputs of model '{model.name}': "
            f"send it alone (also got {', '.join(others)})"
        )
    declared = request.datatypes.get(name)
    if declared != "BYTES":
        raise BadRequest(f"input '{name}' expected datatype BYTES, got {declared}")
    array = request.inputs[name]
    if not (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)):
        raise BadRequest(f"input '{name}' expected shape [-1,1], got {list(array.shape)}")
    return [_text(name, index, item) for index, item in enumerate(array.reshape(-1))]


def _text(name: str, index: int, item: object) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bytes | np.bytes_):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"input '{name}': element {index} is not UTF-8 text") from None
    raise BadRequest(f"input '{name}': element {index} is not text")


def check_limits(items: int, tokens: int, max_items: int, max_tokens: int) -> None:
    """The per-request limits on inputs and tokens (settings), checked before any model runs."""
    if not 1 <= items <= max_items:
        raise BadRequest(f"a request carries 1 to {max_items} inputs, got {items}", param="input")
    if tokens > max_tokens:
        raise BadRequest(
            f"the request's {items} inputs have {tokens} tokens; the limit is {max_tokens}",
            param="input",
        )


def item_requests(
    model: ModelVersion, items: list[TokenizedItem], base: InferRequest
) -> list[InferRequest]:
    """A one-row token request per item, each scheduled like ``base`` (priority, timeout...)."""
    names = [name for name in model.inputs if name in _TOKEN_FIELDS]
    datatypes = {name: model.inputs[name].datatype for name in names}
    requests = []
    for item in items:
        candidates: dict[str, Array] = {
            "input_ids": item.ids,
            "attention_mask": np.ones_like(item.ids),
            "token_type_ids": item.type_ids,
        }
        requests.append(
            InferRequest(
                model_name=model.name,
                model_version=model.version,
                inputs={name: candidates[name][np.newaxis, :] for name in names},
                datatypes=datatypes,
                outputs=base.outputs,
                id=base.id,
                priority=base.priority,
                timeout_us=base.timeout_us,
                use_cache=base.use_cache,
                client_gone=base.client_gone,
                arrival_ns=base.arrival_ns,
            )
        )
    return requests


_TOKEN_FIELDS = frozenset(("input_ids", "attention_mask", "token_type_ids"))


def stack_rows(rows: Sequence[dict[str, Array]], names: list[str]) -> dict[str, Array]:
    """Per-item outputs (one row each) -> one output per name, in item order."""
    return {name: np.concatenate([row[name] for row in rows], axis=0) for name in names}
