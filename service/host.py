"""The machine a serving process runs on: its CUDA GPUs, the cores it may use, and its memory.

Small and dependency-free on purpose: the converters and the load tester ask it too.

- ``cuda_gpu_count`` asks the CUDA driver itself (no framework import).
- ``usable_cores`` lowers the CPU affinity by a cgroup v2 quota (a container's limit).
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


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may run on, lowered by a cgroup v2 CPU quota (a container's limit:
    ``docker run --cpus``, compose ``cpus``, a Kubernetes CPU limit)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, -(-int(quota) // int(period))))  # rounded up, as Kubernetes does


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
