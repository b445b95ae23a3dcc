"""Keep freed memory for the next array instead of returning it to the system (glibc only).

The quadrature kernel's temporaries are ``rows x nodes`` arrays of a few hundred kilobytes to
tens of megabytes, allocated and freed many times per fit. glibc's ``malloc`` returns such
blocks to the system as soon as they are freed (``munmap``, or trimming the top of the heap
past ``M_TRIM_THRESHOLD``), so the next array of the same size page-faults on every 4 KiB
page it touches; on a virtual machine a page fault costs microseconds, and on the post's
data this was a fifth of a ``nagq="auto"`` fit (about 2,000 faults per fit).

:func:`keep_freed_memory` raises the two thresholds once per process: blocks below 32 MiB
come from the heap (the largest value ``M_MMAP_THRESHOLD`` takes, and where glibc's own
dynamic threshold ends up in a process that frees large arrays), and up to 256 MiB of freed
heap is kept for reuse. Resident memory after a fit can therefore stay up to 256 MiB above
what the live arrays need; the peak during a fit is the same. Elsewhere than glibc (macOS,
Windows, musl) it does nothing.

The setting is process-wide, so a program that manages its own allocator can keep
``mixedmodels`` out of it: set the environment variable ``MIXEDMODELS_KEEP_FREED_MEMORY=0``
before the first fit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024

_done = False


def keep_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (once per process).

    Returns
    -------
    bool
        Whether the thresholds are set (False where the C library is not glibc or refuses,
        or when the environment variable ``MIXEDMODELS_KEEP_FREED_MEMORY`` is ``0``).
    """
    global _done
    if _done:
        return True
    if os.environ.get("MIXEDMODELS_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
