"""What a model's load costs, measured rather than guessed: the process's resident set (RSS) and
each GPU's used memory (NVML) are read before and after the whole load (every version's sessions
and warm-up), in the process that loads it (the executor with ``--workers``).

Loads are one at a time (the repository's lock), so their growths do not mix; requests served
meanwhile add noise of their own size. A footprint is never taken as less than the model's files
on disk: pages a previous model freed and the allocator hands out again can hide part of a load,
and a loaded model holds at least its weights. On a GPU the per-GPU budget counts what the
instances reserve (their arena caps, which ONNX Runtime keeps them under); the NVML growth is
shown beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from service.host import resident_bytes
from service.models.sources import Estimate
from service.observability import gpu


def size_text(count: int) -> str:
    """Bytes as people read them: ``512 B``, ``60.2 KiB``, ``14.3 MiB``, ``2.0 GiB``."""
    if abs(count) < 1024:
        return f"{count} B"
    value, unit = count / 1024, "KiB"
    for larger in ("MiB", "GiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


@dataclass(frozen=True, slots=True)
class Footprint:
    """One load of one model, as measured."""

    host_bytes: int  # RSS growth across the load (at least the files' size)
    load_s: float
    gpu_bytes: dict[int, int] = field(default_factory=dict)  # per GPU: reserved (arena caps)
    gpu_measured: dict[int, int] = field(default_factory=dict)  # per GPU: NVML growth

    def figures(self) -> str:
        """``14.3 MiB RSS, GPU 0 1.1 GiB (NVML) 2.0 GiB reserved``."""
        parts = [f"{size_text(self.host_bytes)} RSS"]
        for device in sorted(set(self.gpu_bytes) | set(self.gpu_measured)):
            part = f"GPU {device}"
            if device in self.gpu_measured:
                part += f" {size_text(self.gpu_measured[device])} (NVML)"
            if self.gpu_bytes.get(device):
                part += f" {size_text(self.gpu_bytes[device])} reserved"
            parts.append(part)
        return ", ".join(parts)

    def describe(self) -> str:
        """What the repository index shows of a resident model."""
        return f"resident: {self.figures()}, measured over a {self.load_s:.3f} s load"


class Measurement:
    """Started just before a load, finished just after it."""

    def __init__(self) -> None:
        self.rss = resident_bytes()
        self.gpu = gpu.memory_used()
        self.started = time.perf_counter()

    def finish(self, estimate: Estimate) -> Footprint:
        grown = resident_bytes() - self.rss
        after = gpu.memory_used()
        measured = {
            device: max(after[device] - self.gpu.get(device, 0), 0)
            for device in estimate.gpu_bytes
            if device in after
        }
        return Footprint(
            max(grown, estimate.disk_bytes),
            time.perf_counter() - self.started,
            dict(estimate.gpu_bytes),
            measured,
        )
