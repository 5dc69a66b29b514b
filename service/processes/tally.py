"""The counts of ``/v2/models/.../stats`` and ``/metrics`` with ``--workers N``, held where they
survive a worker: in the executor.

The executor counts batches, queues and compute itself. Each worker counts its requests'
outcomes and cache hits and ships what is new in a ``counts`` frame (every
:data:`SHIP_INTERVAL_S`, and before a statistics answer, when the executor asks), so the sums
never go back when a worker dies or is replaced. A worker's prometheus registry (the gateway's
own histograms) is summed with the live workers' at each scrape; a lost worker's last one is
kept among the departed, so those counters do not go back either. The counts start with the
executor: ``infergate_statistics_start_time_seconds`` says when, as Triton's reset on a restart.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families

from service.cache.response_cache import CacheStats
from service.errors import InferenceError
from service.messages import JsonObject
from service.models.repository import RepositoryView
from service.models.version import ModelVersion
from service.observability.metrics import (
    STATISTICS_SINCE,
    ModelCounters,
    exposition,
    merge_exposition,
    registry_text,
)
from service.observability.statistics import RequestCounts
from service.processes.ipc import Channel

#: how often a worker ships what it counted (and before any statistics answer)
SHIP_INTERVAL_S = 0.25
#: a worker that does not answer a fan-out within this is left out of the sums
FAN_OUT_TIMEOUT_S = 5.0

#: a ``counts`` frame: per (model, version), request counts and cache counts (either None)
Counts = dict[tuple[str, str], tuple[RequestCounts | None, tuple[int, int, int, int] | None]]


class Tally:
    """Every worker's shipped counts added to the executor's own."""

    def __init__(
        self, repository: RepositoryView, channels: set[Channel], gathers_registries: bool = True
    ) -> None:
        self.repository = repository
        self.channels = channels
        #: one executor sums the workers' registries (the others would count them again)
        self.gathers_registries = gathers_registries
        self.cache: dict[tuple[str, str], CacheStats] = {}
        self._registries: dict[Channel, bytes] = {}
        self._departed = b""
        STATISTICS_SINCE.set(time.time())

    def add(self, counts: Counts) -> None:
        """A worker's ``counts`` frame."""
        for (name, version), (requests, cache) in counts.items():
            if requests is not None:
                try:
                    self.repository.get(name, version).stats.add_counts(requests)
                except InferenceError:
                    continue  # unloaded meanwhile: its counts went with it
            if cache is not None:
                self.cache.setdefault((name, version), CacheStats()).add(cache)

    def lost(self, channel: Channel) -> None:
        """A worker is gone: its registry's counters stay in the sums, as last scraped."""
        last = self._registries.pop(channel, None)
        if last is not None:
            self._departed = merge_exposition([self._departed, _monotonic(last)])

    async def statistics(self, name: str, version: str) -> JsonObject:
        await self.fan_out("ship", None)
        models = sorted(
            self.repository.select(name, version), key=lambda m: (m.name, int(m.version))
        )
        return {"model_stats": [model.stats.to_dict(self._cache(model)) for model in models]}

    async def metrics(self) -> tuple[list[ModelCounters], bytes]:
        if self.gathers_registries:
            for channel, text in (await self.fan_out("ship_metrics", None)).items():
                self._registries[channel] = text  # type: ignore[assignment]
        else:  # the workers' counts of this executor's models, not their registries
            await self.fan_out("ship", None)
        counters = [
            model.stats.counters(self._cache(model), model.scheduler.pending)
            for model in sorted(self.repository.select(), key=lambda m: (m.name, int(m.version)))
        ]
        texts = [registry_text(), self._departed, *self._registries.values()]
        return counters, merge_exposition(texts)

    def _cache(self, model: ModelVersion) -> dict[str, int]:
        slot = self.cache.get((model.name, model.version))
        return slot.as_dict() if slot is not None else {}

    async def fan_out(self, kind: str, payload: object) -> dict[Channel, object]:
        """Ask every worker; the answers that came in time, by worker."""
        calls = {channel: channel.call(kind, payload) for channel in list(self.channels)}
        if not calls:
            return {}
        done, _ = await asyncio.wait(calls.values(), timeout=FAN_OUT_TIMEOUT_S)
        return {
            channel: call.result()
            for channel, call in calls.items()
            if call in done and call.exception() is None
        }


def _monotonic(text: bytes) -> bytes:
    """The counter and histogram samples of an exposition (gauges die with their process)."""
    kept = [
        family
        for family in text_string_to_metric_families(text.decode())
        if family.type in ("counter", "histogram", "summary")
    ]
    return exposition(kept)
