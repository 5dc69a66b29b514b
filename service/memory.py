"""Memory of a serving process: heap pages given back after a large request, and the garbage
collector tuned for many short-lived objects around long-lived ones.

glibc keeps freed heap pages for reuse, so one hostile 60 MB body would leave the process that
much bigger for good; ``malloc_trim`` returns them. Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


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
