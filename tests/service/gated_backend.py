"""A backend that runs nothing until the test opens its gate: batching tests without timing.

The test holds the gate, enqueues, looks at the queue, then releases: what the batcher did is
decided by the order of those steps alone, never by how fast the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.backends.base import Backend
from service.dataplane.batching import DynamicBatcher
from service.models.version import ModelVersion, Submission
from service.observability.statistics import ModelStats
from service.settings import Settings
from tests.helpers import wait_until_async

#: one FP32 input ``x`` of any width, answered with ``y = 2 * x``
GATED_CONFIG = """
name: "gated"
max_batch_size: 8
input { name: "x" data_type: TYPE_FP32 dims: [ -1 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ -1 ] }
instance_group { count: 1 kind: KIND_CPU }
dynamic_batching { }
"""


class GatedBackend(Backend):
    """Each ``execute`` records its batch and waits on its own gate; ``release`` opens gates."""

    def __init__(self, concurrency: int = 1) -> None:
        self.concurrency = concurrency
        self.received: list[dict[str, np.ndarray]] = []
        self._gates: list[asyncio.Event] = []
        self.failure: Exception | None = None  # raised by every batch released while set

    async def execute(
        self, inputs: dict[str, np.ndarray], output_names: list[str]
    ) -> dict[str, np.ndarray]:
        gate = asyncio.Event()
        self.received.append(inputs)
        self._gates.append(gate)
        await gate.wait()
        if self.failure is not None:
            raise self.failure
        return {"y": inputs["x"] * 2}

    @property
    def batch_rows(self) -> list[int]:
        """Rows of every batch received so far, in order."""
        return [int(batch["x"].shape[0]) for batch in self.received]

    @property
    def held(self) -> int:
        """Batches waiting at their gate."""
        return sum(not gate.is_set() for gate in self._gates)

    def release(self, count: int | None = None) -> None:
        """Open the gates of the ``count`` oldest held batches (all when None)."""
        closed = [gate for gate in self._gates if not gate.is_set()]
        for gate in closed if count is None else closed[:count]:
            gate.set()

    async def until_received(self, batches: int) -> None:
        """Until ``batches`` batches in all have reached the backend."""
        await wait_until_async(
            lambda: len(self.received) >= batches,
            what=f"{batches} batches to reach the backend (have {len(self.received)})",
        )

    async def drain(self, batcher: DynamicBatcher) -> None:
        """Release batch after batch until the batcher has nothing queued or running."""

        def idle() -> bool:
            self.release()
            return not batcher.pending

        await wait_until_async(idle, what=f"the batcher to drain ({batcher.pending} pending)")


def gated_config(
    edit: Callable[[model_config_pb2.ModelConfig], None] | None = None,
) -> model_config_pb2.ModelConfig:
    config = text_format.Parse(GATED_CONFIG, model_config_pb2.ModelConfig())
    if edit is not None:
        edit(config)
    return config


def gated_batcher(
    backend: GatedBackend,
    edit: Callable[[model_config_pb2.ModelConfig], None] | None = None,
    **settings: object,
) -> DynamicBatcher:
    """The real batcher over ``backend`` for :data:`GATED_CONFIG` (after ``edit``).

    Call it from the running event loop (the batcher starts its task there). It sheds by
    predicted stay only when a test passes ``max_queue_wait_ms``: a gated backend measures no
    throughput, so admission would otherwise bound its queue to a few batches.
    """
    settings.setdefault("max_queue_wait_ms", 0)
    model = ModelVersion("gated", "1", gated_config(edit), backend)
    model.stats = ModelStats(model.name, model.version)
    model.scheduler = DynamicBatcher(model, model.stats, Settings(grpc_port=0, **settings))  # type: ignore[arg-type]
    return model.scheduler


def submit(
    batcher: DynamicBatcher, rows: int = 1, width: int = 4, value: float = 1.0, **kwargs: object
) -> asyncio.Future[dict[str, np.ndarray]]:
    """Enqueue ``rows`` rows of width ``width`` (the width is the batch signature)."""
    x = np.full((rows, width), value, dtype=np.float32)
    return batcher.submit(Submission({"x": x}, rows, (width,), **kwargs))  # type: ignore[arg-type]
