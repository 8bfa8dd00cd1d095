"""Issue 16: power cut at the block device, under the image's own kernel and filesystem.

The amd64 twin of the Pi image (the same build script, files and filesystem settings, with
Debian's amd64 kernel instead of the Pi firmware) boots under qemu, with KVM where it answers.
A child sends QoS 1 telemetry while the cloud is away; after a random number of PUBACKs the qemu
process is killed with SIGKILL: the virtual disk keeps what the guest had written to it and
nothing more, as a card does when the plug is pulled. After every boot: the root filesystem is
mounted read-write (not remounted read-only after errors), gatewayd started by itself, and its
backlog holds at least every message it acknowledged. At the end the cloud comes back and every
acknowledged message arrives. GATEWAYD_POWER_CUTS sets the number of cuts (10; 30 with
--runslow), GATEWAYD_POWER_CUT_SEED replays a run.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.support.broker import Mosquitto
from tests.support.clients import CloudVerifier
from tests.support.wait import wait_until
from tests.system import pi_site
from tests.system.guest import elapsed, kvm_works

MISSING = pi_site.missing_tools("qemu-system-x86_64")
# emulated: ./dev.sh test runs it in a second pytest process beside the rest of the suite
pytestmark = [pytest.mark.emulated, pytest.mark.skipif(
    bool(MISSING), reason=f"missing {MISSING} (./dev.sh test installs them)")]
CI_CUTS, RUNSLOW_CUTS = 10, 30


def _boot(guest, first: bool) -> None:
    """Boot and wait for sshd. Some hosts open /dev/kvm but run no guest on it (a nested or
    paravirtual KVM: the guest prints nothing at all): the first boot falls back to TCG when
    KVM shows no kernel output within 30 s, and the rest use what worked."""
    guest.start()
    if guest.accel == "kvm" and first:
        try:
            wait_until(guest.console, bool, timeout=30, interval=0.5,
                       what="the kernel's first line under KVM")
        except AssertionError:
            guest.stop()
            guest.accel = "tcg"
            print("KVM ran no guest here; TCG from here")
            guest.start()
    guest.wait_up(900)


def test_power_cuts_lose_no_acknowledged_message(pc_image, tmp_path, request):
    default = RUNSLOW_CUTS if request.config.getoption("--runslow") else CI_CUTS
    cuts = int(os.environ.get("GATEWAYD_POWER_CUTS", default))
    seed = int(os.environ.get("GATEWAYD_POWER_CUT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"{cuts} power cuts, seed {seed}")
    started = time.monotonic()
    cloud = Mosquitto(tmp_path / "cloud")
    cloud.start()
    device, key, _ = pi_site.register_child(cloud.port)
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    verifier.disconnect()
    guest = pi_site.prepare_guest(pc_image, tmp_path / "vm", "amd64", cloud.port,
                                  accel="kvm" if kvm_works() else "tcg")
    acked: set[int] = set()
    next_i = 0
    try:
        _boot(guest, first=True)
        pi_site.active(guest)
        pi_site.wait_status(guest, lambda d: pi_site.online(d) and d["registry_version"] == 1,
                            "online with the registry")
        cloud.stop()
        pi_site.wait_status(guest, lambda d: not pi_site.online(d), "the uplink down")
        for n in range(cuts):
            sender = pi_site.Sender(pi_site.child(guest, device, key), next_i)
            sender.start()
            at = rng.randint(1, 400)
            sender.wait_acked_count(at, timeout=300)
            guest.power_cut()
            sender.join(60)
            acked |= sender.acked()
            next_i = sender.next
            sender.c.close()
            _boot(guest, first=False)
            _after_the_cut(guest, n, acked)
        cloud.start()
        verifier.connect()
        verifier.wait_for(lambda m: acked <= {x.i for x in m}, timeout=600,
                          what="every acknowledged message at the cloud")
        print(f"{cuts} cuts ({guest.accel}), {len(acked)} acknowledged, "
              f"{len(verifier.distinct())} delivered, in {elapsed(started)}")
    finally:
        guest.stop()
        verifier.disconnect()
        cloud.stop()


def _after_the_cut(guest, n: int, acked: set[int]) -> None:
    options = guest.ssh("findmnt -no OPTIONS /").strip()
    assert options.startswith("rw"), f"after cut {n + 1}: root mounted {options}"
    pi_site.active(guest)
    doc = pi_site.wait_status(guest, lambda d: True, "status")
    assert pi_site.backlog(doc) >= len(acked), (
        f"after cut {n + 1}: backlog {pi_site.backlog(doc)} < {len(acked)} acknowledged")
    # what the initramfs's fsck of the root did (with fsck.repair=yes: -y), for the note
    fsck = guest.ssh("cat /run/initramfs/fsck.log", check=False).strip().splitlines()
    repaired = [line for line in fsck if "FIXED" in line or "MODIFIED" in line
                or "Unattached" in line or "Clearing" in line]
    summary = [line.strip() for line in fsck if line.startswith("gwroot:")]
    print(f"cut {n + 1}: backlog {pi_site.backlog(doc)}, acked {len(acked)}; root fsck: "
          f"{summary[-1] if summary else 'no log'}; {len(repaired)} repairs")
