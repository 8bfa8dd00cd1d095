"""A reserve of disk space the store can always fall back on.

RocksDB's out-of-space error is sticky: once a write fails, every later write and even closing
fail, and the database lock stays taken until the process ends; a fresh open then needs free
space to replay its log into a new table. So gatewayd keeps a ballast file of
`storage.reserve_bytes` in the storage directory, allocated for real (posix_fallocate). If the
disk fills anyway, it deletes the ballast and exits with EX_TEMPFAIL; systemd restarts it, and
the restart has the room to reopen the store and drain. Every message that had its PUBACK is in
the store's log; the others were never acknowledged and their children send them again.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

NAME = "ballast"


def ensure(directory: Path, size: int) -> str:
    """Create or top up the reserve; '' when done, else why not (a journal line's worth)."""
    if size <= 0:
        return ""
    path = Path(directory) / NAME
    try:
        if path.exists() and path.stat().st_size >= size:
            return ""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        return f"cannot reserve {size} bytes under {directory} ({exc.strerror}); a full disk " \
               f"will need a person to free space before the store can reopen"
    return ""


def release(directory: Path) -> bool:
    """Give the reserve back to the filesystem; True if there was one."""
    try:
        (Path(directory) / NAME).unlink()
    except FileNotFoundError:
        return False
    return True


def is_disk_full(error_text: str) -> bool:
    return "no space left" in error_text.lower()
