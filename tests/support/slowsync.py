"""The slow-flash shim (slowsync.c): built once with gcc, preloaded into a process, read outside.

A test or the bench gives a process `SlowSync(...).env()` as extra environment; every fsync,
fdatasync, syncfs, sync, msync(MS_SYNC) and waiting sync_file_range of that process then takes
`millis` longer, as on an SD card, and is counted in a shared page the caller reads with
`counts()` while the process runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("slowsync.c")
SLOTS = ("flushes", "fsync", "fdatasync", "sync_file_range", "syncfs", "sync", "msync",
         "delay_ns")


def default_cache() -> Path:
    """~/.cache/gatewayd-tests (XDG_CACHE_HOME when set): one build serves every session."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gatewayd-tests"


def build(cache_dir: Path | None = None) -> Path:
    """The shim's .so, compiled with gcc unless a build of this very source is cached.

    The file name carries a hash of the source, so an edited shim is rebuilt; the build goes to
    a temporary name first and is renamed, so sessions building at once never load half a file.
    """
    cache = Path(cache_dir) if cache_dir else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    source = SOURCE.read_bytes()
    target = cache / f"slowsync-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.exists():
        return target
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("the slow-flash shim needs a C compiler: apt-get install gcc")
    fd, partial = tempfile.mkstemp(prefix=".slowsync-", suffix=".so", dir=cache)
    os.close(fd)
    try:
        subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", partial, str(SOURCE),
                        "-ldl", "-lpthread"], check=True, capture_output=True, text=True)
        os.replace(partial, target)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"building {SOURCE.name} failed:\n{exc.stderr}") from None
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


class SlowSync:
    """One preloaded process's (or processes') delay and counters."""

    def __init__(self, millis: float, count_file: Path, cache_dir: Path | None = None) -> None:
        self.millis = millis
        self.count_file = Path(count_file)
        self.library = build(cache_dir)

    def env(self) -> dict[str, str]:
        """Extra environment for the process to slow down (LD_PRELOAD appended to any other)."""
        preload = " ".join(p for p in (os.environ.get("LD_PRELOAD", ""), str(self.library)) if p)
        return {"LD_PRELOAD": preload, "SLOWSYNC_MS": str(self.millis),
                "SLOWSYNC_COUNT_FILE": str(self.count_file)}

    def counts(self) -> dict[str, int]:
        """The counters now: every slot is 0 until the process makes its first call."""
        try:
            raw = self.count_file.read_bytes()[: 8 * len(SLOTS)]
        except FileNotFoundError:
            raw = b""
        raw = raw.ljust(8 * len(SLOTS), b"\0")
        return dict(zip(SLOTS, struct.unpack(f"<{len(SLOTS)}Q", raw), strict=True))

    def flushes(self) -> int:
        """Calls that waited for the medium (and were delayed) so far."""
        return self.counts()["flushes"]
