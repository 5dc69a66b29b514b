"""GPU memory as a managed resource: loaded model versions reserve their instances' arena caps.

With ``INFERGATE_GPU_MEMORY_BUDGET_BYTES`` set, a model version whose instances would not fit
on a GPU next to those already loaded is refused before any session is created, so it becomes
UNAVAILABLE with the reason instead of failing later with an out-of-memory error.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one backend holds; hand it back with ``GpuMemoryLedger.release``."""

    token: int
    owner: str  # "model/version"
    bytes_per_gpu: dict[int, int]


class GpuMemoryLedger:
    """Per-GPU bytes reserved by loaded model versions (process-wide, thread-safe)."""

    def __init__(self) -> None:
        self._held: dict[int, Reservation] = {}
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()

    def reserve(
        self, owner: str, bytes_per_gpu: dict[int, int], budget_bytes: int
    ) -> Reservation | None:
        """Reserve or raise ValueError; a reload of ``owner`` does not count its old copy."""
        if not bytes_per_gpu:
            return None
        with self._lock:
            if budget_bytes > 0:
                unlimited = [gpu for gpu, amount in bytes_per_gpu.items() if amount <= 0]
                if unlimited:
                    raise ValueError(
                        f"the GPU memory budget is {budget_bytes} bytes per GPU, so every GPU "
                        "instance needs a limit: set the model parameter "
                        "infergate.gpu_mem_limit_bytes (or Triton's gpu_mem_limit)"
                    )
                for gpu, amount in sorted(bytes_per_gpu.items()):
                    used = self.used(gpu, excluding=owner)
                    if used + amount > budget_bytes:
                        raise ValueError(
                            f"GPU {gpu} has {budget_bytes - used} of its {budget_bytes} budget "
                            f"bytes left, this version's instances need {amount}"
                        )
            reservation = Reservation(next(self._tokens), owner, dict(bytes_per_gpu))
            self._held[reservation.token] = reservation
            return reservation

    def release(self, reservation: Reservation | None) -> None:
        if reservation is not None:
            with self._lock:
                self._held.pop(reservation.token, None)

    def used(self, gpu: int, excluding: str = "") -> int:
        return sum(
            held.bytes_per_gpu.get(gpu, 0)
            for held in self._held.values()
            if held.owner != excluding
        )


LEDGER = GpuMemoryLedger()
