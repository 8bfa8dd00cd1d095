"""Issue 16's memory budget for small Pis (a Pi Zero 2 W has 512 MB for everything): gatewayd's
resident set on arm64, in the emulated Pi image, with a backlog of 1,000,000 messages, at
start-up and through the whole drain. Memory is what emulation measures faithfully; its times
mean nothing.

The backlog is written in the guest by the package's own outbox code (gatewayd stopped, as the
user it runs as): an ingest of a million messages through the emulated network would take
hours and prove nothing more about memory. The idle and 100-children figures are taken by
test_pi_image.py on every run; this one is a long run (--runslow).
"""

from __future__ import annotations

import time

import pytest

from tests.support.broker import Mosquitto
from tests.system import pi_site
from tests.system.guest import elapsed

MISSING = pi_site.missing_tools("qemu-system-aarch64")
pytestmark = [pytest.mark.slow, pytest.mark.emulated, pytest.mark.skipif(
    bool(MISSING), reason=f"missing {MISSING} (./dev.sh test installs them)")]
BACKLOG = 1_000_000
BUDGET_MIB = 64

PRELOAD = """
import sys, time
from gateway.storage.store import Store
from gateway.upstream.message import Message
from gateway.upstream.outbox import Outbox
count = int(sys.argv[1])
store = Store("/var/lib/gatewayd")
outbox = Outbox(store)
body = b'{"temp":21.5,"hum":40.1,"pad":"' + b"x" * 160 + b'"}'
now = int(time.time() * 1000)
written = 0
while written < count:
    n = min(20000, count - written)
    for _ in range(n):
        outbox.append(Message("pi-child", now, now + 7 * 86_400_000, "", body))
    outbox.commit_now()
    written += n
store.close()
"""


def _memory(guest) -> tuple[float, float]:
    """(VmRSS, VmHWM) of gatewayd in the guest, MiB."""
    found = pi_site.memory_mib(guest)
    return found["VmRSS"], found["VmHWM"]


def test_a_million_message_backlog_fits_a_small_pi(pi_image, tmp_path):
    started = time.monotonic()
    cloud = Mosquitto(tmp_path / "cloud")
    cloud.start()
    pi_site.register_child(cloud.port)
    guest = pi_site.prepare_guest(pi_image, tmp_path / "vm", "arm64", cloud.port, accel="tcg")
    guest.start()
    try:
        guest.wait_up(1500)
        pi_site.wait_status(guest, lambda d: pi_site.online(d) and d["registry_version"] == 1,
                            "online with the registry")
        cloud.stop()
        pi_site.wait_status(guest, lambda d: not pi_site.online(d), "the uplink down")
        idle, _ = _memory(guest)

        guest.ssh("systemctl stop gatewayd")
        guest.ssh(f"cat > /tmp/preload.py <<'EOF'\n{PRELOAD}\nEOF\n"
                  f"runuser -u gatewayd -- /opt/gatewayd/bin/python /tmp/preload.py {BACKLOG}",
                  timeout=7200)
        print(f"preloaded {BACKLOG} in {elapsed(started)}")
        guest.ssh("systemctl start gatewayd")
        pi_site.active(guest)
        doc = pi_site.wait_status(guest, lambda d: True, "status")
        assert pi_site.backlog(doc) >= BACKLOG
        at_backlog, start_peak = _memory(guest)

        cloud.start()
        pi_site.wait_status(guest, lambda d: pi_site.backlog(d) == 0, "the backlog drained",
                            timeout=7200)
        after, drain_peak = _memory(guest)
        print(f"arm64 gatewayd RSS, MiB: idle {idle:.1f}; with {BACKLOG} stored {at_backlog:.1f} "
              f"(peak at start-up {start_peak:.1f}); after the drain {after:.1f}, peak over the "
              f"drain {drain_peak:.1f}; in {elapsed(started)}")
        assert drain_peak < BUDGET_MIB, f"peak {drain_peak:.1f} MiB"
    finally:
        guest.stop()
        cloud.stop()
