"""glibc's allocator, set for a Pi with 512 MB: a drain of a long backlog must not leave the
process holding the memory RocksDB gave back.

Two of glibc's adaptive defaults are what a drain trips over (docs/performance.md, "Memory
through a drain"): every thread that allocates may get an arena of its own (RocksDB's flush and
compaction threads do), and the mmap threshold rises each time a large block is freed, so the
1 MiB blocks of a memtable's arena are soon taken from the heap instead of mapped, and stay
resident after the memtable is flushed. A fixed threshold of 128 KiB (glibc's starting value)
keeps those blocks mapped, so freeing them returns them to the system; two arenas are enough
for one event loop and one writer thread.

The unit sets both as glibc tunables (GLIBC_TUNABLES, read by glibc before the process runs).
Anywhere else, gatewayd started by hand or by a test, mallopt(3) sets them once the process
runs, through ctypes. Elsewhere than on glibc it does nothing.
"""

from __future__ import annotations

import os

M_MMAP_THRESHOLD = -3  # <malloc.h>
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENA_MAX = 2
# what systemd/gatewayd.service puts in the environment (tests/unit/test_allocator.py checks it)
TUNABLES = (f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD_BYTES}",
            f"glibc.malloc.arena_max={ARENA_MAX}")


def tuned_by_environment() -> bool:
    """True when glibc was started with both settings: then ctypes is not imported at all,
    0.3 MiB of resident memory for the daemon's life (measured idle)."""
    given = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return all(tunable in given for tunable in TUNABLES)


def tune() -> bool:
    """Set the threshold and the arena cap; False where the C library has no mallopt."""
    if tuned_by_environment():
        return True
    import ctypes  # only where the environment did not set them

    try:
        # the process's own symbols, the C library's among them (find_library runs ldconfig)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_ARENA_MAX, ARENA_MAX))
