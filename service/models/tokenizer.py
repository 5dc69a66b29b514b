"""Text -> token ids with the Hugging Face ``tokenizer.json`` kept beside a model.

A model folder (or one of its version folders) that holds ``tokenizer.json`` accepts text: the
gateway tokenizes before batching, so clients need neither the vocabulary nor a tokenizer. The
config.pbtxt parameters ``infergate.tokenizer.*`` (declared in ``service.parameters``: the text
input's name, tokens per text, truncation side, pad id) say how; Triton ignores them, so the same
repository still loads in ``tritonserver``.

Encoding runs in the Rust tokenizer (``encode_batch``) on a worker thread: it releases the GIL and
never holds up the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2

from service import parameters
from service.errors import BadRequest
from service.messages import Array
from service.observability import requestlog, tracing

TOKENIZER_FILE = "tokenizer.json"
#: the graph inputs a tokenizer can feed (a model may take a subset, input_ids always)
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True, slots=True)
class TokenizerOptions:
    """How a model's texts become token ids, from its config.pbtxt parameters."""

    text_input: str = "text"
    max_length: int = 512
    truncation_side: Literal["right", "left"] = "right"
    pad_id: int = 0

    @classmethod
    def from_config(cls, config: model_config_pb2.ModelConfig) -> TokenizerOptions:
        """Parse the parameters; ValueError names a bad one (the model then fails to load)."""
        side = parameters.TOKENIZER_TRUNCATION_SIDE.choice(config)
        return cls(
            text_input=parameters.TOKENIZER_TEXT_INPUT.text(config),
            max_length=parameters.TOKENIZER_MAX_LENGTH.integer(config, minimum=2),
            truncation_side="left" if side == "left" else "right",
            pad_id=parameters.TOKENIZER_PAD_ID.integer(config),
        )


@dataclass(frozen=True, slots=True)
class TokenizedItem:
    """One text (or token array) as the model sees it, unpadded."""

    ids: Array  # int64 [length]
    type_ids: Array  # int64 [length]

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


class TextTokenizer:
    """A loaded ``tokenizer.json`` with the model's truncation settings."""

    def __init__(self, tokenizer: Tokenizer, options: TokenizerOptions) -> None:
        tokenizer.no_padding()  # the batcher pads, to the longest in each batch
        tokenizer.enable_truncation(options.max_length, direction=options.truncation_side)
        self._tokenizer = tokenizer
        self.options = options
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def load(
        cls, folders: Sequence[Path], config: model_config_pb2.ModelConfig, graph_inputs: set[str]
    ) -> TextTokenizer | None:
        """The tokenizer in the first of ``folders`` that has one (None when none has); blocking.

        ValueError when the model cannot take what a tokenizer produces."""
        path = next((f / TOKENIZER_FILE for f in folders if (f / TOKENIZER_FILE).is_file()), None)
        if path is None:
            return None
        options = TokenizerOptions.from_config(config)
        unfed = sorted(graph_inputs - set(TOKEN_INPUTS))
        if "input_ids" not in graph_inputs or unfed:
            raise ValueError(
                f"{path} is a tokenizer, but the model's inputs {sorted(graph_inputs)} are not "
                f"input_ids plus any of {list(TOKEN_INPUTS[1:])}"
            )
        if options.text_input in graph_inputs:
            raise ValueError(f"text input '{options.text_input}' is also a graph input")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust library raises plain Exception for a bad file
            raise ValueError(f"{path} is not a Hugging Face tokenizer: {exc}") from exc
        return cls(tokenizer, options)

    def encode_sync(self, texts: Sequence[str], truncate: bool) -> list[TokenizedItem]:
        """Blocking; see :meth:`encode`."""
        encodings = self._tokenizer.encode_batch(list(texts))
        items: list[TokenizedItem] = []
        for index, encoding in enumerate(encodings):
            if encoding.overflowing and not truncate:
                raise self._too_long(index)
            items.append(
                TokenizedItem(
                    np.asarray(encoding.ids, dtype=np.int64),
                    np.asarray(encoding.type_ids, dtype=np.int64),
                )
            )
        return items

    async def encode(self, texts: Sequence[str], truncate: bool) -> list[TokenizedItem]:
        """Token ids per text, cut to ``max_length`` (or 400 for a longer one unless
        ``truncate``). Runs on a worker thread: the Rust encoder releases the GIL."""
        if not requestlog.ACTIVE:
            return await asyncio.to_thread(self.encode_sync, texts, truncate)
        started = time.perf_counter_ns()
        items = await asyncio.to_thread(self.encode_sync, texts, truncate)
        requestlog.step("tokenize", started, {tracing.TEXTS: len(texts)})
        return items

    def from_ids(self, index: int, ids: Sequence[int], truncate: bool) -> TokenizedItem:
        """A client's own token ids (the model's vocabulary, special tokens included)."""
        if not ids:
            raise BadRequest(f"input {index} is an empty token array", param="input")
        if min(ids) < 0 or max(ids) >= self.vocab_size:  # before any C integer conversion
            raise self.outside_vocabulary(f"input {index}")
        array = np.asarray(ids, dtype=np.int64)
        limit = self.options.max_length
        if array.size > limit:
            if not truncate:
                raise self._too_long(index)
            array = array[-limit:] if self.options.truncation_side == "left" else array[:limit]
        return TokenizedItem(array, np.zeros_like(array))

    def outside_vocabulary(self, where: str) -> BadRequest:
        return BadRequest(
            f"{where} has a token id outside the vocabulary 0..{self.vocab_size - 1}",
            param="input",
        )

    def _too_long(self, index: int) -> BadRequest:
        return BadRequest(
            f"input {index} is longer than the model's {self.options.max_length} tokens "
            "(send truncate: true to cut it)",
            param="input",
            code="context_length_exceeded",
        )


def truncate_parameter(value: object) -> bool:
    """The ``truncate`` request option: true (the default) cuts long inputs, false rejects them."""
    if value is None:
        return True
    if not isinstance(value, bool):
        raise BadRequest(f"'truncate' must be true or false, got {value!r}", param="truncate")
    return value
