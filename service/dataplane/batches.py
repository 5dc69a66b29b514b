"""One batch's requests: what the batcher keeps of each (:class:`Pending`), their inputs merged
into the batch (paddable inputs padded to the longest first) and the batch's outputs split back
into each request's rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.errors import Internal
from service.messages import Array, Tensors
from service.observability.timing import Timing

Outputs = Tensors


class Sink(Protocol):
    """Where a request's answer goes: the asyncio future its caller awaits in-process, or the
    executor's answer to a front-end worker (``service.processes.requests``)."""

    def done(self) -> bool: ...

    def set_result(self, result: Outputs, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass(slots=True)
class Pending:
    inputs: Tensors
    rows: int
    signature: tuple[object, ...]
    future: Sink
    enqueued_ns: int
    deadline_ns: int  # 0 = no deadline
    client_gone: Callable[[], bool] | None = None
    tokens: int = 0  # padded sequence length of each row (token budget; 0 = not counted)
    timing: Timing | None = None  # traced or logged: its times and trace context


def merge(batch: list[Pending], pad_inputs: frozenset[str], pad_values: dict[str, int]) -> Tensors:
    """The batch's inputs, concatenated along the batch axis."""
    if len(batch) == 1:
        return batch[0].inputs
    merged: Tensors = {}
    for name in batch[0].inputs:
        arrays = [pending.inputs[name] for pending in batch]
        if name in pad_inputs:
            arrays = _pad_to_longest(arrays, pad_values.get(name, 0))
        merged[name] = np.concatenate(arrays, axis=0)
    return merged


def split(batch: list[Pending], outputs: Outputs) -> None:
    """Resolve each request's future with its own rows of the outputs."""
    if len(batch) == 1:
        if not batch[0].future.done():
            batch[0].future.set_result(outputs)
        return
    total = sum(p.rows for p in batch)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise Internal(f"output '{name}' has shape {list(array.shape)}; expected {total} rows")
    offset = 0
    for pending in batch:
        end = offset + pending.rows
        if not pending.future.done():
            pending.future.set_result({name: array[offset:end] for name, array in outputs.items()})
        offset = end


def _pad_to_longest(arrays: list[Array], value: int = 0) -> list[Array]:
    """Pad every non-batch axis to the longest in the batch with ``value`` (token ids with the
    tokenizer's pad id, attention masks with 0)."""
    longest = tuple(max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays)))
    padded = []
    for array in arrays:
        if array.shape[1:] == longest:
            padded.append(array)
            continue
        widths = [(0, 0)] + [(0, want - have) for have, want in zip(array.shape[1:], longest)]
        padded.append(np.pad(array, widths, constant_values=value))
    return padded
