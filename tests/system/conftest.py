"""What the system tests share: the amd64 twin of the Pi image, built once per session for the
layout checks and the power cuts, and the arm64 Pi image.

The arm64 build (its packages' scripts under qemu-user: one core for ten minutes and more)
starts as soon as the session knows it will need it, and runs beside the amd64 tests; the tests
that boot it run last, by when it is (nearly) done. One after the other, the two would not fit
CI's hour beside the rest of the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.system import pi_site
from tests.system.guest import elapsed

ROOT = Path(__file__).resolve().parents[2]
_arm64: dict = {}  # the background build: its process, output, log and start time


def pytest_collection_modifyitems(session, config, items) -> None:
    """The tests that boot the arm64 image go last, so that its build has the others' time."""
    items.sort(key=lambda item: "pi_image" in getattr(item, "fixturenames", ()))


def pytest_collection_finish(session) -> None:
    wanted = any("pi_image" in getattr(item, "fixturenames", ()) and
                 not item.get_closest_marker("skip") for item in session.items)
    if wanted and not pi_site.prebuilt("arm64") and not pi_site.missing_tools():
        factory = getattr(session.config, "_tmp_path_factory", None)
        _start_arm64_build(factory.mktemp("pi") if factory else Path(tempfile.mkdtemp()))


def pytest_sessionfinish(session) -> None:
    """A build still running when the session ends (stopped, or its tests deselected) is
    stopped with its whole process group; build-image.sh unmounts its chroot on the way out."""
    proc = _arm64.get("proc")
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _start_arm64_build(out: Path) -> None:
    image = out / "gatewayd-rpi-arm64.img"
    script = (f'deb=$("{ROOT}/debian/build-deb.sh" --arch arm64 | tail -1) && '
              f'cp "$deb" "{out}/" && '
              f'"{ROOT}/image-build/build-image.sh" --arch arm64 --deb "$deb" '
              f'--out "{image}" --size 1600M')
    log = open(out / "build.log", "wb")  # noqa: SIM115 - lives with the build
    _arm64.update(proc=subprocess.Popen(["sh", "-c", script], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True),
                  image=image, log=out / "build.log", started=time.monotonic())


@pytest.fixture(scope="session")
def pc_image(tmp_path_factory):
    """The amd64 twin (same script, files and filesystem settings, Debian's PC kernel)."""
    if pi_site.prebuilt("amd64"):
        return pi_site.prebuilt("amd64")
    out = tmp_path_factory.mktemp("pc")
    deb = pi_site.build_deb("amd64", out)
    return pi_site.build_image("amd64", deb, out / "gatewayd-amd64.img", "1200M")


@pytest.fixture(scope="session")
def pi_image(tmp_path_factory):
    """The arm64 Pi image, its packages' scripts run under qemu-user through binfmt."""
    if pi_site.prebuilt("arm64"):
        return pi_site.prebuilt("arm64")
    if not _arm64:  # a session that did not know it would need it (a test picked by -k)
        _start_arm64_build(tmp_path_factory.mktemp("pi"))
    code = _arm64["proc"].wait(timeout=3600)
    assert code == 0, f"the arm64 build failed:\n{_arm64['log'].read_text()[-3000:]}"
    print(f"arm64 .deb and image built in {elapsed(_arm64['started'])}")
    return _arm64["image"]
