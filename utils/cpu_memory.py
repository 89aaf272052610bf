"""Let glibc's malloc keep freed memory for reuse, for CPU training and inference.

PyTorch's CPU tensors come from malloc, and glibc serves large blocks with ``mmap`` and gives
them back to the system when they are freed. Every full-image activation of SMNet is such a
block, so each forward and backward pass asks the kernel for fresh pages and pays for zeroing
them on first touch: on a 2-core machine that system time was about a third of a training step.
Serving every block from the heap and never trimming it lets freed activations be reused, the
choice PyTorch's CUDA caching allocator makes too; the process then holds on to its peak memory
until it exits.
"""
from __future__ import annotations

import ctypes
import platform

# mallopt parameters from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_LARGEST_INT = 2**31 - 1

_applied = False


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (no mmap for large blocks, no trimming).

    Returns whether the setting is in effect; False where the C library is not glibc.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    _applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, _LARGEST_INT) == 1
    return _applied
