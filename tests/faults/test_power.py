"""Power cuts beyond kill -9: the store lives on powerfs (tests/support/powerfs.py), which drops
every write not yet fsync'ed when the test cuts the power. At random moments during offline
ingest the daemon is SIGKILLed and the power cut, then it restarts on what was durable: every
message a child got a PUBACK for must reach the cloud, in order."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.faults.delivery import check_delivery, connect_children, finish, sender
from tests.support.clients import new_key
from tests.support.offline import cut_off_gateway

POWERFS = Path(__file__).parent.parent / "support" / "powerfs.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-pyfuse3 lives
CHILDREN = 3


class PowerFs:
    """The mounted filesystem process and its power switch."""

    def __init__(self, mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(POWERFS), str(mountpoint)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "mounted":
            self.proc.kill()
            pytest.fail(f"powerfs did not mount ({line!r}): run ./dev.sh test, which installs "
                        "fuse3 and python3-pyfuse3")
        self.lost_bytes = 0

    def cut(self) -> None:
        """Drop every unsynced write; returns once powerfs says it is done."""
        self.proc.send_signal(signal.SIGUSR1)
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["cut"], line
        self.lost_bytes = int(line[3])

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)


@pytest.fixture
def powerfs(tmp_path):
    if subprocess.run([SYSTEM_PYTHON, "-c", "import pyfuse3, trio"], check=False).returncode:
        pytest.fail("python3-pyfuse3 is not installed: run ./dev.sh test, which installs it")
    fs = PowerFs(tmp_path / "powerfs")
    yield fs
    fs.close()


def _power_cuts(cloud, gateways, powerfs, cuts: int, per_child: int, seed: int) -> None:
    rnd = random.Random(seed)
    keys = {f"p-{n}": new_key() for n in range(CHILDREN)}
    gw, verifier = cut_off_gateway(cloud, gateways, keys,
                                   storage={"path": str(powerfs.mountpoint / "store")})

    children, infos, timelines = connect_children(keys, gw.plain_port)
    stop = threading.Event()
    senders = [sender(c, 0, per_child, infos[c.device_id], stop, timelines[c.device_id])
               for c in children]
    lost = 0
    for _ in range(cuts):
        time.sleep(rnd.uniform(0.05, 0.4))  # the random moment of the cut
        gw.kill()
        powerfs.cut()
        lost = powerfs.lost_bytes  # powerfs counts since it mounted
        gw.start()
    finish(senders, children, infos)
    cloud.start()
    verifier.connect()
    figures = check_delivery(verifier, {d: per_child for d in keys}, timelines)
    for child in children:
        child.close()
    print(f"\npower: {cuts} cuts survived, {lost} unsynced bytes dropped, 0 PUBACKed lost, "
          f"{figures}")
    assert lost > 0, "no cut dropped anything: the test proved nothing about fsync"


def test_power_cuts_during_offline_ingest(cloud, gateways, powerfs):
    _power_cuts(cloud, gateways, powerfs, 15, per_child=1000, seed=5)


@pytest.mark.slow
def test_power_cuts_long(cloud, gateways, powerfs):
    _power_cuts(cloud, gateways, powerfs, 100, per_child=8000, seed=55)
