"""Many models on one machine: loaded on their first request, evicted least recently used first to
stay within a memory budget (``--model-control-mode on_demand``, ``--model-memory-budget`` for the
host memory of CPU instances, ``--gpu-memory-budget-bytes`` per GPU).

:class:`Residency` keeps the measured footprint of every resident model (``service.models.
footprint``), makes room before a load and after it (when the first guess was short), and runs one
load per model however many requests ask at once. An evicted version stays in its entry, dormant:
its config, tokenizer and statistics remain (so decoding, validation and the result cache still
work, and a cache hit never loads a model), its backend is :class:`Dormant` and its scheduler a
:class:`DemandScheduler`, which loads the model again when a request has to run. A reload with the
same completed config brings the same version object back to life, so what holds it (a request
under way, a front-end worker's mirror) goes on unchanged.

Never evicted: a pinned model (``infergate.pinned``), one being loaded, one with requests queued or
running (its scheduler's ``pending``). In the other control modes nothing is evicted: a load that
would not fit the budget fails with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from service.backends.base import Backend
from service.errors import InferenceError, NotFound, Unavailable
from service.host import release_memory
from service.messages import Tensors
from service.models.footprint import Footprint, size_text
from service.models.sources import Estimate
from service.models.version import ModelEntry, ModelState, ModelVersion, Submission
from service.observability.metrics import (
    MODEL_EVICTIONS,
    MODEL_LOAD_SECONDS,
    MODEL_LOADS,
    RESIDENT_BYTES,
)
from service.settings import Settings

log = logging.getLogger(__name__)

NEVER_LOADED = "unloaded (loads on its first request)"
#: how often a load waiting for room checks whether a busy model has finished its work
BUSY_POLL_S = 0.005


class Dormant(Backend):
    """Stands for the sessions of an evicted version: nothing runs here."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def execute(self, inputs: Tensors, output_names: list[str]) -> Tensors:
        raise Unavailable(f"model '{self.name}' is not loaded")

    def healthy(self) -> bool:
        return False


def _collect() -> None:
    """Free what an evicted version leaves in reference cycles (a cancelled batcher's last batch,
    whose outputs hold ONNX Runtime's arena), then give the heap's free pages back."""
    gc.collect()
    release_memory()


def _retrieved(task: asyncio.Task[None]) -> None:
    """A load's outcome went to its waiters (if any were left): never "never retrieved"."""
    if not task.cancelled():
        task.exception()


def is_dormant(model: ModelVersion) -> bool:
    return isinstance(model.backend, Dormant)


class _Sink(Protocol):
    """Where an answer goes (``service.dataplane.batches.Sink``)."""

    def done(self) -> bool: ...

    def set_result(self, result: Tensors, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class DemandScheduler:
    """An evicted version's scheduler: a request that has to run loads the model again (one load
    however many wait), then joins the loaded version's batcher."""

    def __init__(self, residency: Residency, model: ModelVersion) -> None:
        self.residency = residency
        self.model = model
        self.waiting = 0

    @property
    def pending(self) -> int:
        return self.waiting

    def submit(self, submission: Submission) -> asyncio.Future[Tensors]:
        return asyncio.ensure_future(self._forward(submission))

    def enqueue(self, submission: Submission, sink: _Sink) -> None:
        """:meth:`submit` with the answer going to ``sink`` (the executor's to a worker)."""
        forwarded = self.submit(submission)

        def answer(done: asyncio.Future[Tensors]) -> None:
            if sink.done():
                return
            if done.cancelled():
                sink.set_exception(Unavailable("the load was cancelled", retry_after_s=1))
            elif (error := done.exception()) is not None:
                sink.set_exception(error)
            else:
                sink.set_result(done.result())

        forwarded.add_done_callback(answer)

    def figures(self) -> tuple[int, int, int, float | None]:
        """Nothing queued here: a version that is not loaded has no queue of its own."""
        return time.monotonic_ns(), 0, 0, None

    async def _forward(self, submission: Submission) -> Tensors:
        self.waiting += 1
        try:
            await self.residency.demand(self.model.name)
        finally:
            self.waiting -= 1
        loaded = self.residency.use(self.model.name, self.model.version)
        return await loaded.scheduler.submit(submission)

    def refusal(
        self, rows: int, units: int, priority: int = 0, timeout_us: int = 0, arrival_ns: int = 0
    ) -> InferenceError | None:
        """Nothing is queued for a version that is not loaded: the load timeout bounds a wait."""
        return None

    async def admit(
        self, rows: int, units: int, priority: int = 0, timeout_us: int = 0, arrival_ns: int = 0
    ) -> None:
        """Admitted as a whole: what its parts wait for is the load, bounded by its timeout."""
        return None

    def units(self, rows: int, tokens: int) -> int:
        return rows * tokens if self.model.pad_inputs and tokens else rows

    async def close(self) -> None:
        return None


class Residency:
    """Which models are resident, what each measurably holds, and what gives way to a load.

    ``models`` is the repository's own table; ``load`` its load (taking its lock), ``use`` its
    resolution of a request's version."""

    def __init__(
        self,
        models: dict[str, ModelEntry],
        settings: Settings,
        load: Callable[[str], Awaitable[None]],
        use: Callable[[str, str], ModelVersion],
    ) -> None:
        self.models = models
        self.settings = settings
        self.on_demand = settings.model_control_mode == "on_demand"
        self.budget = int(settings.model_memory_budget)
        self.gpu_budget = settings.gpu_memory_budget_bytes
        self.load = load
        self.use = use
        self.resident: dict[str, Footprint] = {}
        self.measured: dict[str, Footprint] = {}  # the last load of every model loaded once
        self.pinned: set[str] = set()
        self.loads: dict[str, int] = {}  # successful loads per model
        self.evictions: dict[str, int] = {}  # evictions to make room, per model
        self.waiting: dict[str, int] = {}  # requests waiting for a model's load
        self._loading: dict[str, asyncio.Task[None]] = {}

    # -- a request's model ---------------------------------------------------------------------
    async def demand(self, name: str) -> None:
        """Return once ``name`` is resident: join its load under way or start one, and wait for it
        at most ``--model-load-timeout-s`` (503 + Retry-After after that; the load goes on)."""
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if entry.failed:
            raise Unavailable(f"model '{name}' is UNAVAILABLE: {entry.reason}")
        if name in self.resident:
            return
        task = self._loading.get(name)
        if task is None:
            task = self._loading[name] = asyncio.ensure_future(self._load(name))
            task.add_done_callback(_retrieved)
        timeout = self.settings.model_load_timeout_s
        self.waiting[name] = self.waiting.get(name, 0) + 1
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout if timeout > 0 else None)
        except TimeoutError:
            raise Unavailable(
                f"model '{name}' is still loading after {timeout:g} s; retry",
                retry_after_s=self.settings.retry_after_s,
            ) from None
        finally:
            self.waiting[name] -= 1

    async def _load(self, name: str) -> None:
        try:
            await self.load(name)
        finally:  # loading no more from now on, before the next load takes the lock
            if self._loading.get(name) is asyncio.current_task():
                del self._loading[name]
        if name not in self.resident:
            entry = self.models.get(name)
            reason = entry.reason if entry is not None else "it left the repository"
            raise Unavailable(f"model '{name}' failed to load: {reason}")

    # -- around a load (the repository's lock held) --------------------------------------------
    def expected(self, name: str, estimate: Estimate) -> int:
        """Host bytes a load of ``name`` will take: as last measured, else its files' size."""
        known = self.measured.get(name)
        return known.host_bytes if known is not None else estimate.disk_bytes

    async def make_room(self, name: str, estimate: Estimate) -> None:
        """Evict until the load fits (on_demand), waiting for busy models to finish their work
        (at most the load timeout); ValueError when it can never fit or, in the other modes,
        does not fit now; Unavailable + Retry-After when only pinned models are left to evict,
        or the busy ones stayed busy."""
        host = self.expected(name, estimate)
        self._fits_at_all(name, host, estimate)
        loop = asyncio.get_running_loop()
        timeout = self.settings.model_load_timeout_s
        deadline = loop.time() + timeout if timeout > 0 else float("inf")
        while (short := self._shortfall(name, host, estimate.gpu_bytes)) is not None:
            device, detail = short
            if not self.on_demand:
                raise ValueError(detail)
            victim, busy = self._victim(name, device)
            if victim is not None:
                await self.evict(victim, f"evicted to make room for '{name}'")
            elif busy and loop.time() < deadline:
                await asyncio.sleep(BUSY_POLL_S)  # their queued and running work ends soon
            else:
                holders = ", ".join(sorted(self._holders(name, device)))
                raise Unavailable(
                    f"cannot load '{name}' now: {detail}, and every resident model there is "
                    f"pinned or has requests queued or running ({holders}); retry",
                    retry_after_s=self.settings.retry_after_s,
                )

    def _fits_at_all(self, name: str, host: int, estimate: Estimate) -> None:
        if self.budget and host > self.budget:
            basis = "as last measured" if name in self.measured else "its files on disk"
            raise ValueError(
                f"model '{name}' needs {size_text(host)} of host memory ({basis}), more than "
                f"the whole --model-memory-budget of {size_text(self.budget)}"
            )
        for device, amount in sorted(estimate.gpu_bytes.items()):
            if self.on_demand and self.gpu_budget and amount > self.gpu_budget:
                raise ValueError(
                    f"model '{name}' reserves {size_text(amount)} on GPU {device}, more than the "
                    f"whole --gpu-memory-budget-bytes of {size_text(self.gpu_budget)}"
                )

    def _shortfall(
        self, name: str, host: int, gpu_bytes: dict[int, int]
    ) -> tuple[int | None, str] | None:
        """The first budget the load would exceed (None: host memory, else the GPU) and how."""
        others = [f for other, f in self.resident.items() if other != name]
        if self.budget:
            held = sum(f.host_bytes for f in others)
            if held + host > self.budget:
                return None, (
                    f"'{name}' needs {size_text(host)} and {size_text(held)} of the "
                    f"{size_text(self.budget)} --model-memory-budget is held"
                )
        for device, amount in sorted(gpu_bytes.items()):  # other modes: the ledger refuses
            held = sum(f.gpu_bytes.get(device, 0) for f in others)
            if self.on_demand and self.gpu_budget and held + amount > self.gpu_budget:
                return device, (
                    f"'{name}' reserves {size_text(amount)} on GPU {device} and {size_text(held)} "
                    f"of its {size_text(self.gpu_budget)} --gpu-memory-budget-bytes is held"
                )
        return None

    def _holders(self, name: str, device: int | None) -> list[str]:
        """Resident models other than ``name`` holding memory of ``device`` (None: the host)."""
        return [
            other
            for other, footprint in self.resident.items()
            if other != name and (device is None or footprint.gpu_bytes.get(device, 0) > 0)
        ]

    def _victim(self, name: str, device: int | None) -> tuple[str | None, bool]:
        """The least recently used idle, unpinned model holding memory where it is short, and
        whether others there could go once their work is done."""
        candidates = []
        busy = False
        for other in self._holders(name, device):
            entry = self.models.get(other)
            if entry is None or other in self.pinned:
                continue
            if other in self._loading or any(m.scheduler.pending for m in entry.versions.values()):
                busy = True  # queued or running work (or a load under way) is never evicted
                continue
            last = max((model.last_use for model in entry.versions.values()), default=0)
            candidates.append((last, other))
        return (min(candidates)[1] if candidates else None), busy

    async def loaded(self, entry: ModelEntry, footprint: Footprint, pinned: bool) -> None:
        """A load of ``entry`` succeeded: count its footprint, and if it measured more than was
        made room for, evict more (on_demand) until the sum fits again."""
        name = entry.name
        self.forget(name)
        self.resident[name] = self.measured[name] = footprint
        self.loads[name] = self.loads.get(name, 0) + 1
        (self.pinned.add if pinned else self.pinned.discard)(name)
        entry.reason = footprint.describe()
        MODEL_LOADS.labels(name, "ok").inc()
        MODEL_LOAD_SECONDS.labels(name).observe(footprint.load_s)
        RESIDENT_BYTES.labels(name, "cpu").set(footprint.host_bytes)
        for device, grown in footprint.gpu_measured.items():
            RESIDENT_BYTES.labels(name, f"gpu:{device}").set(grown)
        own = footprint.host_bytes
        while self.budget and (short := self._shortfall(name, own, {})) is not None:
            victim = self._victim(name, None)[0] if self.on_demand else None
            if victim is None:
                log.warning("model %s: over the memory budget after its load: %s", name, short[1])
                return
            await self.evict(victim, f"evicted: '{name}' measured more than was made room for")

    def failed(self, name: str) -> None:
        MODEL_LOADS.labels(name, "failed").inc()

    # -- leaving -------------------------------------------------------------------------------
    async def evict(self, name: str, why: str, counted: bool = True) -> None:
        """Make every version of ``name`` dormant, then close its batchers and sessions
        (``counted``: an eviction to make room, not an unload asked for)."""
        entry = self.models[name]
        footprint = self.forget(name)
        closing = []
        for model in entry.versions.values():
            if not is_dormant(model):
                closing.append((model.scheduler, model.backend))
                model.backend, model.scheduler = Dormant(name), DemandScheduler(self, model)
        was = f"; it held {footprint.figures()}" if footprint is not None else ""
        entry.state, entry.reason = ModelState.UNAVAILABLE, f"unloaded ({why}{was})"
        entry.wanted = False
        if footprint is not None and counted:
            self.evictions[name] = self.evictions.get(name, 0) + 1
            MODEL_EVICTIONS.labels(name).inc()
            log.info("model %s %s", name, entry.reason)
        released = bool(closing)
        while closing:
            scheduler, backend = closing.pop()
            await scheduler.close()
            await backend.close()
            del scheduler, backend  # the sessions go with their last reference
        if released:  # their pages go back to the system: the next load measures a true RSS
            await asyncio.to_thread(_collect)

    def forget(self, name: str) -> Footprint | None:
        """``name`` is no longer resident (unloaded, reloading or gone): its figures leave."""
        footprint = self.resident.pop(name, None)
        if footprint is not None:
            for device in ["cpu", *(f"gpu:{gpu}" for gpu in footprint.gpu_measured)]:
                with contextlib.suppress(KeyError):  # another repository of this process
                    RESIDENT_BYTES.remove(name, device)
        return footprint
