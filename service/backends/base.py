"""The contract between the batcher and whatever executes a batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2

from service.messages import Tensors


@dataclass(frozen=True, slots=True)
class Calibration:
    """One timed warm-up batch: ``units`` of work (rows, or rows x tokens for a model that pads
    token sequences) in ``seconds``, what admission predicts from until real batches ran."""

    units: int
    seconds: float


class Backend(ABC):
    """Executes batches of one model version.

    ``inputs`` hold the batch dimension first when the model batches (``max_batch_size > 0``).
    Implementations must not block the event loop: CPU work goes to a thread pool, remote work
    is awaited.
    """

    #: how many batches may run at once (instance_group count, or replicas for remote backends)
    concurrency: int = 1
    #: the timed warm-up batch (set by ``warm_up``); None when none ran
    calibration: Calibration | None = None
    #: :meth:`run` may be called on the event loop's own thread (a local session)
    runs_inline: bool = False

    @abstractmethod
    async def execute(self, inputs: Tensors, output_names: list[str]) -> Tensors:
        """Run one batch and return the requested outputs by name."""

    def run(self, inputs: Tensors, output_names: list[str]) -> Tensors:
        """One batch on the caller's thread, blocking (only where ``runs_inline``): for batches
        so short that handing them to a thread would cost more than running them."""
        raise NotImplementedError

    def warm_up(self, config: model_config_pb2.ModelConfig) -> None:  # noqa: B027 - optional
        """Run the config's model_warmup before the model is READY (blocking: a load thread)."""

    def healthy(self) -> bool:
        """Whether a batch could run now (remote backends: some replica is up)."""
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release sessions, connections and threads."""
