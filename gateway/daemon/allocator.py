"""glibc's allocator, set for a Pi with 512 MB: a drain of a long backlog must not leave the
process holding the memory RocksDB gave back.

Two of glibc's adaptive defaults are what a drain trips over (docs/performance.md, "Memory
through a drain"): every thread that allocates may get an arena of its own (RocksDB's flush and
compaction threads do), and the mmap threshold rises each time a large block is freed, so the
1 MiB blocks of a memtable's arena are soon taken from the heap instead of mapped, and stay
resident after the memtable is flushed. A fixed threshold of 128 KiB (glibc's starting value)
keeps those blocks mapped, so freeing them returns them to the system; two arenas are enough
for one event loop and one writer thread.

mallopt(3) can be called once the process runs, which, unlike the MALLOC_* environment
variables, also covers gatewayd started by hand or by a test. Elsewhere than on glibc it does
nothing.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # <malloc.h>
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENA_MAX = 2


def tune() -> bool:
    """Set the threshold and the arena cap; False where the C library has no mallopt."""
    try:
        # the process's own symbols, the C library's among them (find_library runs ldconfig)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_ARENA_MAX, ARENA_MAX))
