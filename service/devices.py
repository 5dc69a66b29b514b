"""Which CUDA GPUs this process can see, asked of the driver itself (no framework import)."""

from __future__ import annotations

import ctypes


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
