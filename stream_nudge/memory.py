"""Giving freed memory back to the system after a restore.

A restore holds every changelog record (about 1.5 KB each: a document's original) while it
rebuilds the arrays; once they are freed, glibc's allocator keeps most of those pages in its
heap, and a member would stay at about twice its state's size for the rest of its life.
``malloc_trim(0)`` returns them. Where the C library has no such call (not glibc), nothing
happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

__all__ = ["give_back_freed_memory"]


@functools.cache
def _trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def give_back_freed_memory() -> None:
    """Collect garbage, then return the allocator's free pages to the system."""
    gc.collect()
    trim = _trim()
    if trim is not None:
        trim(0)
