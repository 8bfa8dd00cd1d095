"""The slow-flash shim counts what a preloaded process flushes (the fairness tests read it).

Nothing is timed here: the delay is set to 0 and only the counters are checked, from outside
the process, as the integration tests and the bench read them from gatewayd.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.support.slowsync import SlowSync

CHILD = textwrap.dedent("""
    import ctypes, errno, os, sys
    path = sys.argv[1]
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 4096)
    for _ in range(3):
        os.fsync(fd)
    for _ in range(2):
        os.fdatasync(fd)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    assert libc.sync_file_range(fd, 0, 0, 2) == 0         # WRITE only: starts, does not wait
    assert libc.sync_file_range(fd, 0, 0, 1 | 2 | 4) == 0  # WAIT_BEFORE|WRITE|WAIT_AFTER
    os.close(fd)
    try:
        os.fsync(fd)  # closed: the real call's EBADF must reach the caller unchanged
    except OSError as exc:
        assert exc.errno == errno.EBADF, exc
    else:
        raise AssertionError("fsync of a closed fd succeeded")
""")


def run_child(shim: SlowSync, target) -> None:
    subprocess.run([sys.executable, "-c", CHILD, str(target)],
                   env=dict(os.environ, **shim.env()), check=True, timeout=60)


def test_the_counter_counts_a_python_fsync_in_a_preloaded_subprocess(tmp_path):
    shim = SlowSync(0, tmp_path / "counts", cache_dir=tmp_path / "cache")
    assert shim.flushes() == 0, "no file yet: nothing counted"
    run_child(shim, tmp_path / "data")
    counts = shim.counts()
    assert counts["fsync"] == 4, counts  # three, and the one that failed with EBADF
    assert counts["fdatasync"] == 2, counts
    assert counts["sync_file_range"] == 2, counts
    # every fsync and fdatasync waits for the medium; only the waiting sync_file_range does
    assert counts["flushes"] == 4 + 2 + 1, counts
    assert counts["delay_ns"] == 0, "SLOWSYNC_MS 0 adds no delay"


def test_two_processes_add_to_one_counter_and_a_delay_is_accounted(tmp_path):
    shim = SlowSync(1.5, tmp_path / "counts", cache_dir=tmp_path / "cache")
    run_child(shim, tmp_path / "a")
    run_child(shim, tmp_path / "b")
    counts = shim.counts()
    assert counts["flushes"] == 14, counts
    assert counts["delay_ns"] == 14 * 1_500_000, "each flush is held SLOWSYNC_MS longer"


def test_a_process_without_the_shim_is_not_counted(tmp_path):
    shim = SlowSync(0, tmp_path / "counts", cache_dir=tmp_path / "cache")
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "data")], check=True, timeout=60)
    assert shim.flushes() == 0


def test_the_build_is_cached_by_its_source(tmp_path):
    first = SlowSync(0, tmp_path / "c1", cache_dir=tmp_path / "cache").library
    second = SlowSync(0, tmp_path / "c2", cache_dir=tmp_path / "cache").library
    assert first == second and first.exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name], "no partial left"
