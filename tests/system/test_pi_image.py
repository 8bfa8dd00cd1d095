"""Issue 16: the arm64 .deb and the Pi image, built here and booted under emulation.

The arm64 image is built by image-build/build-image.sh on this x86_64 machine (its packages'
scripts run under qemu-user through binfmt, which ./dev.sh test sets up), then checked as it
lies on disk: the partition table, the firmware partition the Pi boots from, the root
filesystem. Then it boots under qemu-system-aarch64 (`-M virt`, TCG) with its own kernel and
initrd and its partitions as virtio disks, and the host, as an operator's site would, drives it:
first-boot settings from the boot partition, the service and its STATUS line, a child's
messages stored while the cloud is away, a watchdog kill, a reboot over the backlog, the drain.
"""

from __future__ import annotations

import time

import pytest

from tests.support.broker import Mosquitto
from tests.support.clients import CloudVerifier
from tests.support.wait import wait_until
from tests.system import pi_site
from tests.system.guest import (
    INITRD_FSCK,
    PI_CMDLINE,
    boot_files,
    debugfs,
    elapsed,
    extract,
    initrd_holds,
    partitions,
    run,
)

MISSING = pi_site.missing_tools("qemu-system-aarch64")
# emulated: ./dev.sh test runs these in a second pytest process beside the rest of the suite
pytestmark = [pytest.mark.emulated, pytest.mark.skipif(
    bool(MISSING), reason=f"missing {MISSING} (./dev.sh test installs them)")]
PI_DTBS = ("bcm2711-rpi-4-b.dtb", "bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb")
EM_AARCH64 = 183  # ELF e_machine
CHILDREN = 100  # connected at once for the memory figure (issue 16's budget for small Pis)
RSS_BUDGET_MIB = 64  # the Pi Zero 2 W has 512 MB for everything


def _elf_machine(root_fs, path: str, out) -> int:
    debugfs(root_fs, [f"dump {path} {out}"])
    return int.from_bytes(out.read_bytes()[18:20], "little")


def test_the_image_is_a_pi_image(pi_image, tmp_path):
    table = partitions(pi_image)
    (boot_start, _), (root_start, _) = table
    assert boot_start == 4 * 1024 * 1024
    fat = f"{pi_image}@@{boot_start}"
    top = run(["mdir", "-b", "-i", fat, "::/"]).upper()
    for name in ("CONFIG.TXT", "CMDLINE.TXT", "START4.ELF", "FIXUP4.DAT", *map(str.upper, PI_DTBS)):
        assert f"::/{name}" in top, f"{name} missing from the firmware partition:\n{top}"
    cmdline = run(["mtype", "-i", fat, "::/cmdline.txt"]).split()
    assert set(PI_CMDLINE.split()) <= set(cmdline), f"the guests boot as {PI_CMDLINE}: {cmdline}"
    assert "GATEWAYD.TOML.EXAMPLE" in run(["mdir", "-b", "-i", fat, "::/gatewayd"]).upper()

    root = extract(pi_image, table[1], tmp_path / "root.ext4")
    assert "has_journal" in run(["dumpe2fs", "-h", str(root)]), "the root keeps a journal"
    _, initrd = boot_files(root, tmp_path)
    assert initrd_holds(initrd, INITRD_FSCK) == set(INITRD_FSCK), \
        "no fsck of the root after a power cut"

    def cat(path: str) -> str:
        return debugfs(root, [f"cat {path}"])

    fstab = cat("/etc/fstab")
    assert "commit=60" in fstab.split("LABEL=gwroot", 1)[1].splitlines()[0]
    assert "Storage=volatile" in cat("/etc/systemd/journald.conf.d/gatewayd-sd-card.conf")
    wants = debugfs(root, ["ls -l /etc/systemd/system/multi-user.target.wants"])
    assert "gatewayd.service" in wants and "gatewayd-firstboot.service" in wants
    assert "gatewayd-store-disk.service" in wants
    python = sorted(p.split()[-1] for p in debugfs(root, ["ls -l /usr/bin"]).splitlines()
                    if p.split() and p.split()[-1].startswith("python3.1"))[-1]
    assert _elf_machine(root, f"/usr/bin/{python}", tmp_path / "py") == EM_AARCH64
    site = debugfs(root, ["ls -l /opt/gatewayd/lib"]).split()[-1]
    rocks = [n.split()[-1] for n in debugfs(
        root, [f"ls -l /opt/gatewayd/lib/{site}/site-packages/rocksdict"]).splitlines()
        if n.split() and n.split()[-1].endswith(".so")]
    assert rocks, "the venv holds rocksdict's extension"
    assert _elf_machine(root, f"/opt/gatewayd/lib/{site}/site-packages/rocksdict/{rocks[0]}",
                        tmp_path / "so") == EM_AARCH64
    keys = debugfs(root, ["ls /etc/gatewayd", "ls /etc/ssh"])
    assert "ca.key" not in keys and "gateway.key" not in keys, "a CA key in every card"
    assert "ssh_host_" not in keys, "the same SSH host keys in every card"


def test_the_pi_image_boots_and_keeps_a_childs_messages(pi_image, tmp_path):
    started = time.monotonic()
    cloud = Mosquitto(tmp_path / "cloud")
    cloud.start()
    device, key, others = pi_site.register_child(cloud.port, others=CHILDREN)
    verifier = CloudVerifier(cloud.port)
    verifier.connect()  # its persistent session queues what arrives while it is away
    verifier.disconnect()
    guest = pi_site.prepare_guest(pi_image, tmp_path / "vm", "arm64", cloud.port, accel="tcg")
    guest.start()
    try:
        guest.wait_up(1500)
        print(f"booted in {elapsed(started)}")
        _first_boot(guest)
        pi_site.active(guest)
        assert guest.ssh("systemctl show -p StatusText --value gatewayd").startswith("uplink")
        pi_site.wait_status(guest, lambda d: pi_site.online(d) and d["registry_version"] == 1,
                            "online with the registry")
        _memory(guest, others)

        cloud.stop()
        pi_site.wait_status(guest, lambda d: not pi_site.online(d), "the uplink down")
        c = pi_site.child(guest, device, key)
        mids = [c.send(i).mid for i in range(100)]
        c.wait_acked(mids, timeout=300)
        c.close()
        assert pi_site.backlog(pi_site.status(guest)) == 100

        _watchdog_kill(guest)
        assert pi_site.backlog(pi_site.status(guest)) == 100
        guest.reboot(1500)
        pi_site.active(guest)
        assert pi_site.backlog(pi_site.wait_status(guest, lambda d: True, "status")) == 100

        cloud.start()
        verifier.connect()
        verifier.wait_for(lambda m: len({x.i for x in m}) == 100, timeout=600,
                          what="the backlog drained to the cloud")
        pi_site.wait_status(guest, lambda d: pi_site.backlog(d) == 0, "an empty backlog")
        print(f"arm64 guest checks done in {elapsed(started)}")
    finally:
        guest.stop()
        verifier.disconnect()
        cloud.stop()


def _memory(guest, keys: dict[str, str]) -> None:
    """gatewayd's resident set on arm64, idle and with every child connected at once."""
    idle = pi_site.rss_mib(guest)
    children = [pi_site.child(guest, device, key) for device, key in keys.items()]
    wait_until(lambda: len(pi_site.status(guest)["children"]), lambda n: n >= len(keys),
               timeout=120, interval=1, what=f"{len(keys)} children connected")
    busy = pi_site.rss_mib(guest)
    for c in children:
        c.close()
    print(f"arm64 gatewayd RSS: {idle:.1f} MiB idle, {busy:.1f} MiB with {len(keys)} children")
    assert busy < RSS_BUDGET_MIB, f"{busy:.1f} MiB with {len(keys)} children"


def _first_boot(guest) -> None:
    """The boot partition's settings were taken once, and the card made its own keys."""
    applied = guest.ssh("ls /boot/firmware/gatewayd")
    assert "gatewayd.toml.applied" in applied and "gatewayd.toml\n" not in applied
    assert pi_site.GATEWAY_ID in guest.ssh("cat /etc/gatewayd/gatewayd.toml")
    guest.ssh("test -s /etc/gatewayd/ca.pem -a -s /etc/gatewayd/gateway.pem")
    guest.ssh("test -s /etc/ssh/ssh_host_ed25519_key")
    assert "arm64" in guest.ssh("dpkg --print-architecture")


def _watchdog_kill(guest) -> None:
    """A hung gatewayd (SIGSTOP) misses its watchdog pings; systemd kills and restarts it."""
    before = int(guest.ssh("systemctl show -p NRestarts --value gatewayd"))
    pid = guest.ssh("systemctl show -p MainPID --value gatewayd").strip()
    guest.ssh(f"kill -STOP {pid}")
    wait_until(lambda: int(guest.ssh("systemctl show -p NRestarts --value gatewayd")),
               lambda n: n > before, timeout=300, interval=2, what="the watchdog restart")
    pi_site.active(guest)
    journal = guest.ssh("journalctl -u gatewayd --no-pager -o cat")
    assert "Watchdog timeout" in journal or "watchdog" in journal.lower()

