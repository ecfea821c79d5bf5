"""Process-wide settings that make CPU runs faster.

glibc serves every allocation above its mmap threshold (adaptive, at most 32 MiB by default) with a
fresh ``mmap`` and gives it back with ``munmap`` when freed; PyTorch's CPU allocator keeps no cache,
so each step's 64^3 volume batches page-fault their memory in anew. On the development VM that was
a quarter of a CPU training step's time, spent in the kernel (``benchmarks/bench_train.py
--compare_allocator``). ``keep_freed_memory_for_reuse`` raises the mmap and trim thresholds so
freed blocks stay in the heap and are reused: the process keeps its peak memory instead of
returning it to the system between steps. Set ``SAM3D_MED_GLIBC_DEFAULTS=1`` to leave glibc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done: bool | None = None


def keep_freed_memory_for_reuse() -> bool:
    """Raise glibc's mmap threshold to 1 GiB and its trim threshold to 2 GiB, once per process.
    Returns whether the settings are in force (False elsewhere than Linux/glibc or when disabled)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or os.environ.get("SAM3D_MED_GLIBC_DEFAULTS") == "1":
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return _done
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    return _done


def default_workers() -> int:
    """Worker processes for CPU-bound data work (preprocessing): the cores, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))
