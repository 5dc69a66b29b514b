"""What crosses between a front-end worker and the executor (``--workers N``), besides errors
and plain values: the repository snapshots the executor pushes, the requests a worker sends in
frames and the answers the executor sends back. Both ends import these;
``service.processes.ipc`` carries them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from service.dataplane.shedding import Figures
from service.messages import Tensors
from service.models.version import ModelState


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What a worker needs of one loaded version: its config, not its sessions."""

    instance: int  # changes when the version is (re)loaded: the worker rebuilds its copy
    config: bytes  # serialized ModelConfig, completed by the backend
    healthy: bool
    has_tokenizer: bool


@dataclass(frozen=True, slots=True)
class EntryInfo:
    name: str
    state: ModelState
    reason: str
    wanted: bool
    default_version: str
    versions: dict[str, VersionInfo] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    generation: int
    started: bool  # the repository's startup loads finished (readiness needs it)
    entries: tuple[EntryInfo, ...]


class RequestEntry(NamedTuple):
    """One request for a model's batcher in a ``requests`` frame (a tuple on the wire: the
    cheapest to pickle)."""

    request_id: int  # the worker's own: the answer comes back under it
    model: str
    version: str
    inputs: Tensors
    rows: int
    signature: tuple[object, ...]
    priority: int
    timeout_us: int
    tokens: int
    key: str | None  # cache key: identical requests in flight share one execution
    arrival_ns: int  # time.monotonic_ns() at the worker's front end (one clock for both)
    admitted: bool  # admitted as a whole already (an "admit" call for a request of many parts)
    #: traced or logged: the W3C traceparent its queue and compute spans continue ("" = times
    #: only), answered with ``service.observability.timing.TimedOutputs``; None = neither
    trace: str | None


#: one ``answers`` frame: (request id, outputs, shared with another request's execution),
#: (request id, error payload), and the queue figures of the models answered for
Answers = tuple[
    list[tuple[int, Tensors, bool]],
    list[tuple[int, tuple[str, str, int | None]]],
    dict[tuple[str, str], Figures],
]
