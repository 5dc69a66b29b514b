"""Triton's GPU metric families (``nv_gpu_*``, label ``gpu_uuid``) read through NVML.

Uses ``nvidia-ml-py`` (``import pynvml``). Without the package, the driver or a GPU nothing is
rendered and nothing fails: a CPU-only gateway simply has no GPU families, as Triton started
without ``--allow-gpu-metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuReading:
    uuid: str
    utilization: float  # 0..1, as Triton reports it
    memory_total_bytes: int
    memory_used_bytes: int
    power_watts: float


# (name, type, help, value) -- Triton 2.51's names and units
_FAMILIES: list[tuple[str, str, str, Callable[[GpuReading], float]]] = [
    ("nv_gpu_utilization", "gauge", "GPU utilization rate [0.0 - 1.0)", lambda r: r.utilization),
    (
        "nv_gpu_memory_total_bytes",
        "gauge",
        "GPU total memory, in bytes",
        lambda r: r.memory_total_bytes,
    ),
    (
        "nv_gpu_memory_used_bytes",
        "gauge",
        "GPU used memory, in bytes",
        lambda r: r.memory_used_bytes,
    ),
    ("nv_gpu_power_usage", "gauge", "GPU power usage in watts", lambda r: r.power_watts),
]

_nvml: ModuleType | None = None
_nvml_checked = False


def _load_nvml() -> ModuleType | None:
    """pynvml, initialised once; None when the package, driver or GPUs are missing."""
    global _nvml, _nvml_checked
    if _nvml_checked:
        return _nvml
    _nvml_checked = True
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() > 0:
            _nvml = pynvml
    except Exception as exc:  # ImportError, or NVMLError without a driver
        log.debug("no GPU metrics: %s", exc)
    return _nvml


def read_gpus() -> list[GpuReading]:
    """One reading per visible GPU; empty without NVML or GPUs (never raises)."""
    nvml = _load_nvml()
    if nvml is None:
        return []
    readings = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            readings.append(
                GpuReading(
                    uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
                    int(memory.total),
                    int(memory.used),
                    nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
                )
            )
    except Exception as exc:  # a GPU lost mid-scrape must not break /metrics
        log.warning("reading GPU metrics failed: %s", exc)
    return readings


def memory_used() -> dict[int, int]:
    """Used memory per GPU index, in bytes (NVML's view of the whole device, every process's
    allocations included); empty without NVML or GPUs (never raises). A model's load measures
    the growth from before to after it (``service.models.footprint``)."""
    nvml = _load_nvml()
    if nvml is None:
        return {}
    used: dict[int, int] = {}
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            used[index] = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception as exc:
        log.warning("reading GPU memory failed: %s", exc)
    return used


def render_lines(readings: list[GpuReading]) -> list[str]:
    """Prometheus text lines for ``readings``; no families at all when there are none."""
    if not readings:
        return []
    lines: list[str] = []
    for name, kind, help_text, value in _FAMILIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f'{name}{{gpu_uuid="{r.uuid}"}} {value(r)}' for r in readings)
    return lines
