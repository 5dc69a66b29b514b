"""Giving memory back to the operating system after a large request.

glibc keeps freed heap pages for reuse, so one hostile 60 MB body would leave the process that
much bigger for good; ``malloc_trim`` returns them. Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


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
