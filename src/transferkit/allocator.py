"""Keep freed memory in the process (``--cpu-allocator``): CPU training without page-fault storms.

glibc's malloc serves every block above its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh
``mmap`` and gives it back to the kernel with ``munmap`` when it is freed, and it trims the top of its heap as soon
as 128 KiB there are free. A network's activations and gradients are such blocks, allocated and freed on every
step: the kernel maps them again and zero-fills every page on first touch, every step. On the 2-core CPU this
project is developed on, a third to a half of the process's CPU time went to the kernel that way
(``benchmarks/cpu_allocator.py``). PyTorch's CPU tuning advice is to preload jemalloc or tcmalloc; this does the part
that matters here with glibc's ``mallopt``, in the process, with nothing to install: blocks up to 32 MiB always come
from the heap, the heap grows in steps of 1 GiB of address space (so larger blocks, too, are mostly carved from its
free top) and is never trimmed: freed memory is reused by the next step. The price is resident size: what a step
needed stays mapped (6-12% more peak memory in whole training runs; with mmap switched off altogether it was 21%,
for no more speed).

The settings are process-wide and stay for the rest of the process (a later ``off`` does not undo them). Nothing
happens outside glibc (macOS, Windows, musl): :func:`keep_freed_memory` says whether they were applied.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

CPU_ALLOCATORS = ("auto", "off")

# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit systems
_SETTINGS = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD),  # blocks up to 32 MiB come from the heap and return to it
             (_M_TRIM_THRESHOLD, 2**31 - 1),  # never give the heap's free top back to the kernel
             (_M_TOP_PAD, 1 << 30))  # grow the heap in large steps: fewer brk calls (address space, not memory)

_applied: bool | None = None  # None: not tried yet in this process


def keep_freed_memory(setting: str = "auto") -> bool:
    """Applies the allocator settings once per process when ``setting`` is ``auto``; True if they are in effect."""
    global _applied
    if setting == "off" or _applied is not None:
        return bool(_applied)
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version  # glibc only (musl has a mallopt that does nothing)
    except (OSError, AttributeError):
        return False
    version.restype = ctypes.c_char_p
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _applied = all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS)
    logger.debug("CPU allocator: glibc %s mallopt settings %s", version().decode(),
                 "applied" if _applied else "refused")
    return _applied
