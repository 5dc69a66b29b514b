"""The machine a serving process runs on: its CUDA GPUs, the cores it may use, and its memory.

Small and dependency-free on purpose: the converters and the load tester ask it too.

- ``cuda_gpu_count`` asks the CUDA driver itself (no framework import).
- ``usable_cores`` lowers the CPU affinity by a cgroup quota (a container's limit), v2 or v1.
- ``resident_bytes`` reads the process's resident set (RSS) from ``/proc/self/statm``: what a
  model's load measurably costs (``service.models.footprint``).
- glibc keeps freed heap pages for reuse, so one hostile 60 MB body would leave the process that
  much bigger for good; ``release_memory`` returns them (elsewhere, musl or macOS, it does
  nothing). ``tune_gc`` sets the garbage collector for many short-lived objects around
  long-lived ones.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import math
import os
from pathlib import Path


def cuda_gpu_count() -> int:
    """GPUs visible to the CUDA driver (0 without a driver or without GPUs)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on, lowered by a cgroup CPU quota (a container's limit:
    ``docker run --cpus``, compose ``cpus``, a Kubernetes CPU limit) and rounded up, as
    Kubernetes does."""
    cores = len(os.sched_getaffinity(0))
    quota = cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def cpu_quota(cgroup: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup's CPU quota in CPUs, None without one: cgroup v2's ``cpu.max``, else v1's
    ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (Docker on a cgroup v1 host)."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        v1_quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        v1_period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if v1_quota <= 0 else v1_quota / v1_period


def resident_bytes() -> int:
    """This process's resident set size in bytes (0 where ``/proc`` is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


@functools.cache
def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Return free heap pages to the OS (blocking; call it off the event loop)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def tune_gc() -> None:
    """Long-lived objects (sessions, configs, modules) need no scanning, and a request allocates
    many short-lived ones: fewer, cheaper collections keep p99 flat under load."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
