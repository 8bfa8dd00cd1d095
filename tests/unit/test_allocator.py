"""glibc's allocator settings take (gateway/daemon/allocator.py): run in child interpreters, so
that this test process keeps its own allocator as it was, and compared with glibc's default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.daemon import allocator

PROBE = """
import ctypes, sys
from gateway.daemon import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    assert allocator.tune()
libc.free(libc.malloc(1024 * 1024))  # glibc's default raises its mmap threshold past 1 MiB here
before = libc.mallinfo2().hblks
block = libc.malloc(1024 * 1024)  # like the next block of a memtable's arena
print(libc.mallinfo2().hblks - before)  # mapped of its own, which free() gives back
libc.free(block)
"""


def mapped_blocks(mode: str, env: dict | None = None) -> int:
    return int(subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                              text=True, check=True, env=env).stdout)


def test_tune_keeps_large_blocks_mapped_so_that_freeing_them_gives_them_back():
    assert mapped_blocks("default") == 0  # from the heap: resident after free() until trimmed
    assert mapped_blocks("tuned") == 1


def test_the_tunables_of_the_unit_take_without_ctypes():
    """systemd/gatewayd.service sets the two as glibc tunables: glibc honours them before the
    process runs, and tune() then leaves ctypes unimported."""
    unit = (Path(__file__).parents[2] / "systemd" / "gatewayd.service").read_text()
    assert f"Environment=GLIBC_TUNABLES={':'.join(allocator.TUNABLES)}" in unit.splitlines()
    env = dict(os.environ, GLIBC_TUNABLES=":".join(allocator.TUNABLES))
    assert mapped_blocks("default", env) == 1, "glibc took the threshold from the environment"
    probe = "import sys; from gateway.daemon import allocator; " \
            "print(allocator.tune(), 'ctypes' in sys.modules)"
    for given, ctypes_loaded in ((env, "False"), (dict(os.environ, GLIBC_TUNABLES=""), "True")):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True, env=given).stdout.split()
        assert out == ["True", ctypes_loaded]
