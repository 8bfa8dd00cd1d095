"""DiskGuard against real filesystems: the backlog quota, the free-space floor on a small loop
filesystem the test fills for real, the hysteresis that keeps it from flapping, and the policies."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gateway.log import LOGGER
from gateway.storage.disk_guard import RESUME_FRACTION, RESUME_FREE_MARGIN, DiskGuard
from tests.support.blockdev import LoopFilesystem

QUOTA = 1_000_000


@pytest.fixture
def journal():
    """The guard's journal lines, caught on the daemon's logger whatever its handlers are."""
    lines: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler, level = Catch(), LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    yield lines
    LOGGER.removeHandler(handler)
    LOGGER.setLevel(level)


def test_under_the_quota_with_room_nothing_happens(tmp_path, journal):
    guard = DiskGuard(tmp_path, QUOTA, 0, "drop-oldest")
    state = guard.check(QUOTA)
    assert not state.full and state.reason == ""
    assert 0 < state.free_percent <= 100
    assert not guard.drops() and not guard.refuses()
    assert journal == []


@pytest.mark.parametrize(("policy", "drops", "refuses"), [
    ("drop-oldest", True, False), ("refuse-new", False, True)])
def test_over_the_quota_the_policy_applies(tmp_path, journal, policy, drops, refuses):
    guard = DiskGuard(tmp_path, QUOTA, 0, policy)
    state = guard.check(QUOTA + 1)
    assert state.full
    assert state.reason == f"backlog of {QUOTA + 1} bytes is over storage.max_bytes ({QUOTA})"
    assert (guard.drops(), guard.refuses()) == (drops, refuses)
    assert len(journal) == 1 and journal[0].startswith(f"storage full: {state.reason}; ")
    guard.check(QUOTA + 2)
    assert len(journal) == 1, "one line when the state changes, none while it stays"


def test_the_quota_resumes_only_well_under_the_limit(tmp_path, journal):
    guard = DiskGuard(tmp_path, QUOTA, 0, "drop-oldest")
    guard.check(QUOTA + 1)
    assert guard.check(QUOTA).full, "at the limit: not over it, but not back under 90% either"
    assert guard.check(int(QUOTA * RESUME_FRACTION)).full
    state = guard.check(int(QUOTA * RESUME_FRACTION) - 1)
    assert not state.full and state.reason == ""
    assert not guard.drops()
    assert len(journal) == 2 and "normal service resumed" in journal[1]


def test_no_quota_means_no_limit_on_the_backlog(tmp_path):
    guard = DiskGuard(tmp_path, 0, 0, "refuse-new")
    assert not guard.check(10**15).full
    assert not guard.refuses()


def test_the_drop_budget_is_a_hundredth_of_the_backlog_and_at_least_a_hundred(tmp_path):
    guard = DiskGuard(tmp_path, QUOTA, 0, "drop-oldest")
    assert guard.drop_budget(0) == 100
    assert guard.drop_budget(50) == 100
    assert guard.drop_budget(1_000_000) == 10_000


# -- the free-space floor, on a filesystem of its own -------------------------------------------


def _free_percent(path: Path) -> float:
    st = os.statvfs(path)
    return 100.0 * st.f_bavail / st.f_blocks


def _fill_to(fs: Path, filler: Path, percent_free: float) -> None:
    """Grow or shrink `filler` (really allocated) until `percent_free` of the filesystem is free."""
    st = os.statvfs(fs)
    block = st.f_frsize
    current = filler.stat().st_size if filler.exists() else 0
    free_now = st.f_bavail * block
    want_free = int(st.f_blocks * block * percent_free / 100)
    size = max(current + free_now - want_free, 0) // block * block
    with open(filler, "ab") as f:
        f.truncate(size)
        if size:
            os.posix_fallocate(f.fileno(), 0, size)
        os.fsync(f.fileno())
    os.sync()


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a loop filesystem")
    fs = LoopFilesystem(tmp_path / "fs", size_mib=16)
    yield fs.mountpoint
    fs.close()


def test_the_free_space_floor_on_a_filling_filesystem(small_fs, journal):
    floor = 50.0
    guard = DiskGuard(small_fs, 0, floor, "refuse-new")
    assert not guard.check(0).full, f"a fresh filesystem is {_free_percent(small_fs):.1f}% free"
    filler = small_fs / "filler"

    _fill_to(small_fs, filler, floor - 10)
    state = guard.check(0)
    assert state.full and guard.refuses()
    assert state.free_percent == pytest.approx(floor - 10, abs=1)
    assert f"under storage.min_free_percent ({floor:g}%)" in state.reason

    _fill_to(small_fs, filler, floor + RESUME_FREE_MARGIN / 2)
    assert floor <= _free_percent(small_fs) < floor + RESUME_FREE_MARGIN
    assert guard.check(0).full, "above the floor, but not by the margin: no flapping"

    filler.unlink()
    os.sync()
    state = guard.check(0)
    assert not state.full and not guard.refuses()
    assert state.free_percent > floor + RESUME_FREE_MARGIN
    assert len(journal) == 2
