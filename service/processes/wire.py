"""What crosses between a front-end worker and the executor (``--workers N``), besides errors
and plain values: the repository snapshots the executor pushes, and one request for a batcher.
Both ends import these; ``service.processes.ipc`` carries them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

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


class SubmitCall(NamedTuple):
    """One request for a model's batcher, as a worker sends it (a tuple: cheap to pickle)."""

    model: str
    version: str
    inputs: Tensors
    rows: int
    signature: tuple[object, ...]
    priority: int
    timeout_us: int
    tokens: int
    key: str | None  # cache key: identical requests in flight share one execution
    watched: bool  # the worker will send "cancel" if the client hangs up
    #: traced or logged: the W3C traceparent its queue and compute spans continue ("" = times
    #: only), answered with ``service.observability.requestlog.TimedOutputs``; None = neither
    trace: str | None
