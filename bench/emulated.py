"""The systems under test in an arm64 root under qemu-user (`bench run --arm64-root ROOT`).

Issue 18 asks for the relay and drain figures on arm64 under emulation, as ratios only: under
qemu-user a message costs many times its native CPU, and not by the same factor for every
kind of code, so only gatewayd against mosquitto's bridge, both emulated in the same round,
says something. The harness, the load generator and the cloud broker stay native; gatewayd
(from the arm64 .deb, /opt/gatewayd) and mosquitto run chrooted in ROOT, made by
bench/arm64-root.sh, through the host's binfmt entry for aarch64.

The root sees the harness's files at the same paths: /tmp (every work directory, the config,
the store and the sockets live there) is bound into it for the run, with /proc and /dev.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path

GATEWAYD_PYTHON = "/opt/gatewayd/bin/python"  # the venv the .deb's postinst makes
MOSQUITTO = "/usr/sbin/mosquitto"
BINDS = ("/tmp", "/proc", "/dev")


def check(root: Path) -> None:
    """Refuse a root that is not an arm64 one with both systems in it, saying what to do."""
    missing = [p for p in (GATEWAYD_PYTHON, MOSQUITTO) if not (root / p.lstrip("/")).exists()]
    if missing:
        raise SystemExit(f"bench: {root} has no {', '.join(missing)}; make it with "
                         f"bench/arm64-root.sh {root}")
    if Path("/tmp") in (root.resolve(), *root.resolve().parents):
        raise SystemExit(f"bench: {root} is under /tmp, which the run binds into it; make the "
                         "root elsewhere (e.g. /var/tmp/arm64-root)")
    if platform.machine() == "aarch64":
        raise SystemExit("bench: --arm64-root is for emulation on another architecture; on an "
                         "arm64 machine run the bench natively")


@contextlib.contextmanager
def bound(root: Path) -> Iterator[None]:
    """/tmp, /proc and /dev bound into the root for the run, unmounted after it."""
    mounted: list[Path] = []
    try:
        for source in BINDS:
            target = root / source.lstrip("/")
            target.mkdir(exist_ok=True)
            subprocess.run(["mount", "--rbind" if source == "/dev" else "--bind", source,
                            str(target)], check=True)
            subprocess.run(["mount", "--make-rslave", str(target)], check=True)
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-R", "-l", str(target)], check=False)


def gatewayd(root: Path) -> list[str]:
    """The interpreter gatewayd runs on in the root."""
    return ["chroot", str(root), GATEWAYD_PYTHON]


def mosquitto(root: Path) -> list[str]:
    return ["chroot", str(root), MOSQUITTO]
