"""Process-wide malloc settings for the processes that train and aggregate: freed memory is kept for reuse
instead of going back to the kernel and coming back as fresh zeroed pages.

glibc gives each allocation above its mmap threshold (128 KiB at start, raised only as such blocks are freed)
pages of its own from the kernel and unmaps them on free, and it trims the heap's top past its trim threshold.
A training step allocates and frees the same few megabytes of activations every batch: in a simulation worker
that was about 1,700 page faults per message and a third of the worker's CPU time in the kernel (figures in
docs/design_notes.md). Allocations up to 32 MiB (glibc's ceiling for the threshold) now come from the heap, and
up to 256 MiB freed at its top stays with the process. Where a user set glibc's malloc tunables in the
environment, or the C library is not glibc, nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 256 << 20
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied: bool | None = None


def _user_tuned() -> bool:
    return any(name in os.environ for name in _USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Set this process's malloc to keep and reuse freed memory (once per process); whether it is set."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or _user_tuned():
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # glibc's own symbol: another libc may read mallopt's numbers differently
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _applied
