"""Every ``infergate.*`` key a ``config.pbtxt`` may set, declared once: name, kind, default,
meaning.

``config.pbtxt`` is the truth per model and means the same on Triton and here: Triton's own
fields come first, and a key of ``parameters`` with the ``infergate.`` prefix only where Triton
has no field (Triton ignores unknown parameters, so the same repository still loads in
``tritonserver``). Each key is read through its :class:`Key` (``PAD_INPUTS.names(config)``), so a
bad value fails the load with a message that names the key, and ``docs/model-config.md`` is
generated from :data:`KEYS` (``make docs``, checked by a test). The converters write keys by
these names too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

PREFIX = "infergate."
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

Kind = Literal["integer", "flag", "text", "names", "choice", "json"]


class _StringValue(Protocol):
    @property
    def string_value(self) -> str: ...


class _Config(Protocol):
    """What a key reads of a ``ModelConfig``: its ``parameters`` map."""

    @property
    def parameters(self) -> Mapping[str, _StringValue]: ...


@dataclass(frozen=True, slots=True)
class Key:
    """One config parameter. ``aliases``: Triton's own spelling of the same setting, read when
    the ``infergate.`` key is absent. ``written``: set by infergate itself (the served config
    reports it), not by users. A name without the prefix is a parameter of Triton's own ONNX
    Runtime backend that infergate honours the same way."""

    name: str
    kind: Kind
    default: str
    meaning: str
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    written: bool = False

    def raw(self, config: _Config) -> str | None:
        """The value as written (stripped), or None when neither the key nor an alias is set."""
        for key in (self.name, *self.aliases):
            if key in config.parameters:
                return str(config.parameters[key].string_value).strip()
        return None

    def text(self, config: _Config) -> str:
        value = self.raw(config)
        return value if value else self.default

    def integer(self, config: _Config, minimum: int = 0) -> int:
        text = self.text(config) or "0"
        if not text.isdigit() or int(text) < minimum:
            least = f" (at least {minimum})" if minimum else ""
            raise ValueError(f"{self.name} must be a non-negative integer{least}, not {text!r}")
        return int(text)

    def flag(self, config: _Config) -> bool:
        text = self.text(config).lower()
        if text in _TRUE:
            return True
        if text in _FALSE or not text:
            return False
        raise ValueError(f"{self.name} must be true or false, not {text!r}")

    def choice(self, config: _Config) -> str:
        text = self.text(config)
        if text not in self.choices:
            allowed = " or ".join(repr(choice) for choice in self.choices)
            raise ValueError(f"{self.name} must be {allowed}, not {text!r}")
        return text

    def names(self, config: _Config) -> list[str]:
        """A comma-separated list of names (empty entries dropped)."""
        return [part.strip() for part in self.text(config).split(",") if part.strip()]


PAD_INPUTS = Key(
    "infergate.pad_inputs",
    "names",
    "",
    "Inputs padded to the longest in a batch (token ids, masks), so sequences of different "
    "lengths share a batch. The converters set it for token models.",
)
MAX_SEQUENCE_LENGTH = Key(
    "infergate.max_sequence_length",
    "integer",
    "0",
    "Longest token sequence the model takes; longer inputs get a 400 before they run. Filled "
    "from the graph's position embeddings when unset (0 = no limit known).",
)
MAX_BATCH_TOKENS = Key(
    "infergate.max_batch_tokens",
    "integer",
    "0",
    "Padded tokens (rows x longest sequence) one batch may hold, like TEI's max_batch_tokens; "
    "queued requests of the nearest lengths join the oldest (0 = batches limited by rows only).",
)
TOKENIZER_TEXT_INPUT = Key(
    "infergate.tokenizer.text_input",
    "text",
    "text",
    "Name of the BYTES input (shape [-1, 1]) that takes text in place of the token inputs, for "
    "a model with a tokenizer.json beside it.",
)
TOKENIZER_MAX_LENGTH = Key(
    "infergate.tokenizer.max_length",
    "integer",
    "512",
    "Tokens per text, special tokens included (at least 2); longer texts are cut, or refused "
    "with truncate: false.",
)
TOKENIZER_TRUNCATION_SIDE = Key(
    "infergate.tokenizer.truncation_side",
    "choice",
    "right",
    "Which end of a long text is cut.",
    choices=("right", "left"),
)
TOKENIZER_PAD_ID = Key(
    "infergate.tokenizer.pad_id",
    "integer",
    "0",
    "What the batcher pads input_ids with.",
)
EMBEDDING_TRUNCATABLE = Key(
    "infergate.embedding.truncatable",
    "flag",
    "false",
    "The first output may be cut to fewer dimensions and L2-normalized again (a Matryoshka "
    "model): /v1/embeddings then honours 'dimensions'.",
)
WARMUP = Key(
    "infergate.warmup",
    "flag",
    "",
    "Without Triton's model_warmup: run one zero batch at max_batch_size on every instance "
    "before the model is READY (timed: admission's first estimate). false = never.",
)
WARMUP_VARIABLE_DIM = Key(
    "infergate.warmup_variable_dim",
    "integer",
    "1",
    "Size given to variable (-1) dimensions in the default warmup batch (unset: 1, and 128 "
    "tokens for the padded token inputs of a text model, capped by its max_sequence_length, "
    "in as many rows as hold max_batch_size rows of 32 tokens).",
)
GPU_MEM_LIMIT_BYTES = Key(
    "infergate.gpu_mem_limit_bytes",
    "integer",
    "0",
    "CUDA EP arena cap of each GPU instance, in bytes; what the instance reserves against "
    "--gpu-memory-budget-bytes (0 = no cap).",
    aliases=("gpu_mem_limit",),
)
ARENA_EXTEND_STRATEGY = Key(
    "infergate.arena_extend_strategy",
    "choice",
    "kNextPowerOfTwo",
    "How the CUDA EP arena grows (0 = kNextPowerOfTwo, 1 = kSameAsRequested).",
    aliases=("arena_extend_strategy",),
    choices=("kNextPowerOfTwo", "kSameAsRequested", "0", "1"),
)
IO_BINDING = Key(
    "infergate.io_binding",
    "flag",
    "false",
    "GPU instances run through ONNX Runtime IO binding: outputs stay in preallocated device "
    "buffers copied out once.",
)
CUDNN_CONV_ALGO_SEARCH = Key(
    "cudnn_conv_algo_search",
    "choice",
    "",
    "Triton's ONNX Runtime backend parameter: the CUDA EP's cuDNN convolution search "
    "(0 = EXHAUSTIVE, 1 = HEURISTIC, 2 = DEFAULT).",
    choices=("0", "1", "2", "EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
)
DO_COPY_IN_DEFAULT_STREAM = Key(
    "do_copy_in_default_stream",
    "flag",
    "",
    "Triton's ONNX Runtime backend parameter: the CUDA EP copies in the default stream.",
)
PINNED = Key(
    "infergate.pinned",
    "flag",
    "false",
    "Keep the model resident under --model-control-mode on_demand: loaded at startup (it then "
    "counts for readiness) and never evicted to make room under a memory budget.",
)
RUNTIME = Key(
    "infergate.runtime",
    "json",
    "",
    "What really runs each instance (device, provider in use, fallbacks), written into the "
    "served config (GET /v2/models/m/config); clients that do not know it ignore it.",
    written=True,
)

KEYS: dict[str, Key] = {
    key.name: key
    for key in (
        PAD_INPUTS,
        MAX_SEQUENCE_LENGTH,
        MAX_BATCH_TOKENS,
        TOKENIZER_TEXT_INPUT,
        TOKENIZER_MAX_LENGTH,
        TOKENIZER_TRUNCATION_SIDE,
        TOKENIZER_PAD_ID,
        EMBEDDING_TRUNCATABLE,
        WARMUP,
        WARMUP_VARIABLE_DIM,
        GPU_MEM_LIMIT_BYTES,
        ARENA_EXTEND_STRATEGY,
        IO_BINDING,
        CUDNN_CONV_ALGO_SEARCH,
        DO_COPY_IN_DEFAULT_STREAM,
        PINNED,
        RUNTIME,
    )
}


def check(config: _Config) -> None:
    """Parse every declared key the config sets; ValueError names the first bad one (the model
    then fails to load with that reason, so requests never meet a malformed value)."""
    for key in KEYS.values():
        if not key.raw(config) or key.kind in ("text", "names", "json"):
            continue
        if key.kind == "integer":
            key.integer(config)
        elif key.kind == "flag":
            key.flag(config)
        else:
            key.choice(config)


def unknown_keys(config: _Config) -> list[str]:
    """``infergate.*`` keys of a config that no :class:`Key` declares (typos, most likely)."""
    return sorted(key for key in config.parameters if key.startswith(PREFIX) and key not in KEYS)


def markdown_table() -> str:
    """The reference table of ``docs/model-config.md``."""
    lines = ["| key | kind | default | meaning |", "|---|---|---|---|"]
    for key in KEYS.values():
        kind = key.kind + (f" ({' / '.join(key.choices)})" if key.choices else "")
        default = f"`{key.default}`" if key.default else "unset"
        meaning = key.meaning
        if key.aliases:
            meaning += " Triton's " + ", ".join(f"`{a}`" for a in key.aliases) + " is read too."
        if key.written:
            meaning += " Written by infergate."
        lines.append(f"| `{key.name}` | {kind} | {default} | {meaning} |")
    return "\n".join(lines) + "\n"
