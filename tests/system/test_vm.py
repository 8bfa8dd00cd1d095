"""Issue 5 done-when 1 and 2: the freshly built .deb under a real systemd.

A Debian bookworm root filesystem (mmdebstrap) with its own kernel boots under qemu.
An agent (guest_agent.sh, a systemd unit in the guest) installs the .deb, checks the service,
its STATUS line, the journal, the watchdog (SIGSTOP), reload, a clean stop, an upgrade over a
backlog, a deployed module as a systemd unit (issue 14 done-when 5: run as gatewayd-module
through polkit, signing over the workload API, logging to its own unit's journal, adopted
across `systemctl restart gatewayd`), remove and purge, and prints one line per check on the
serial console.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
PACKAGES = ("systemd-sysv,systemd,dbus,udev,linux-image-amd64,initramfs-tools,python3,"
            "python3-venv,python3-systemd,python3-qpid-proton,adduser,mosquitto,procps,polkitd")
EXPECTED = [
    "install", "active", "status-line", "journal-ready", "journal-fields", "ca-made",
    "key-private", "restart", "registry", "online", "reload", "reload-journal",
    "reload-applied", "cloud-down", "offline", "send-200", "backlog-200", "watchdog-restart",
    "watchdog-journal", "backlog-after-watchdog", "stop", "store-clean", "start-again",
    "upgrade", "upgraded-version", "upgraded-active", "config-kept", "backlog-kept",
    "cloud-back", "drained",
    "module-conf", "deploy", "module-active", "module-user", "module-journal", "module-signed",
    "module-status", "workload-403", "control-private", "module-restart-gatewayd",
    "module-adopted", "module-same-pid", "module-status-after", "polkit-refused",
    "remove", "removed-stopped", "module-removed", "store-stays", "purge", "purged",
]


def _missing_tools() -> str:
    for tool in ("mmdebstrap", "qemu-system-x86_64", "dpkg-buildpackage", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./dev.sh test installs it)"
    return ""


def _run(cmd: list[str], **kwargs) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def _build_debs(out: Path) -> None:
    for version in ("0.1.0", "0.1.1"):
        _run([str(ROOT / "debian" / "build-deb.sh"), version], timeout=600)
        shutil.copy(ROOT / "dist" / f"gatewayd_{version}_amd64.deb", out)


def _rootfs(tmp: Path, debs: Path) -> Path:
    rootfs = tmp / "rootfs"
    _run(["mmdebstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(rootfs)],
         timeout=900)
    shutil.copytree(debs, rootfs / "root" / "debs")
    shutil.copy(HERE / "child.py", rootfs / "root" / "child.py")
    (rootfs / "usr" / "local" / "lib" / "gwtest").mkdir(parents=True)
    shutil.copy(HERE / "module.py", rootfs / "usr" / "local" / "lib" / "gwtest" / "module.py")
    agent = rootfs / "usr" / "local" / "sbin" / "gwtest"
    shutil.copy(HERE / "guest_agent.sh", agent)
    agent.chmod(0o755)
    (rootfs / "etc" / "systemd" / "system" / "gwtest.service").write_text(
        "[Unit]\nDescription=gatewayd system test agent\nAfter=multi-user.target\n"
        "[Service]\nType=oneshot\nExecStart=/usr/local/sbin/gwtest\nStandardOutput=journal\n"
        "[Install]\nWantedBy=default.target\n")
    wants = rootfs / "etc" / "systemd" / "system" / "default.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "gwtest.service").symlink_to("/etc/systemd/system/gwtest.service")
    (rootfs / "etc" / "fstab").write_text("/dev/vda / ext4 rw,noatime 0 1\n")
    (rootfs / "etc" / "hostname").write_text("gwtest\n")
    return rootfs


def _boot(tmp: Path, rootfs: Path, timeout: float) -> str:
    disk = tmp / "disk.img"
    _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs), str(disk), "3G"],
         timeout=300)
    kernel = sorted(glob.glob(str(rootfs / "boot" / "vmlinuz-*")))[-1]
    initrd = sorted(glob.glob(str(rootfs / "boot" / "initrd.img-*")))[-1]
    serial = tmp / "serial.log"
    # KVM is used when asked for: nested KVM hangs at boot on some CI hosts, TCG always works.
    accel = os.environ.get("GATEWAYD_VM_ACCEL", "tcg")
    proc = subprocess.Popen([
        "qemu-system-x86_64", "-accel", accel, "-m", "1024", "-smp", "2", "-nographic",
        "-no-reboot", "-kernel", kernel, "-initrd", initrd,
        "-append", "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0",
        "-drive", f"file={disk},format=raw,if=virtio", "-nic", "none",
        "-serial", f"file:{serial}", "-monitor", "none",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
    return serial.read_text(errors="replace") if serial.exists() else ""


@pytest.mark.skipif(bool(_missing_tools()), reason=_missing_tools() or "ok")
def test_the_deb_under_a_real_systemd(tmp_path):
    started = time.monotonic()
    debs = tmp_path / "debs"
    debs.mkdir()
    _build_debs(debs)
    built = time.monotonic()
    rootfs = _rootfs(tmp_path, debs)
    bootstrapped = time.monotonic()
    console = _boot(tmp_path, rootfs, timeout=1200)
    lines = [line.split("GWTEST ", 1)[1].strip() for line in console.splitlines()
             if "GWTEST " in line]
    print("\n".join(lines))
    print(f"debs {built - started:.0f} s, rootfs {bootstrapped - built:.0f} s, "
          f"VM {time.monotonic() - bootstrapped:.0f} s")
    results = {line.split()[0]: line for line in lines}
    failed = [results[name] for name in EXPECTED if name in results and " FAIL" in results[name]]
    missing = [name for name in EXPECTED if name not in results]
    assert not failed and not missing, (
        f"failed: {failed}\nmissing: {missing}\nconsole tail:\n{console[-3000:]}")
    assert "done" in results
