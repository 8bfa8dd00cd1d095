"""A machine booted from the image under test, driven from the host over SSH.

The image's own kernel and initrd boot under qemu (arm64 under `-M virt` with TCG, amd64 with KVM
when it answers, else TCG); its partitions are virtio disks. The host reaches the guest's sshd and
gatewayd's plain child port through qemu's user-mode network, which also gives the guest the
host's loopback as 10.0.2.2: the test's mosquitto is the cloud. Killing the qemu process is
cutting the power: whatever the guest had not written to its virtual disks is gone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.broker import free_port
from tests.support.wait import wait_until

HOST_FROM_GUEST = "10.0.2.2"


# The Pi image's kernel command line (raspi-firmware's cmdline.txt, which test_pi_image checks),
# for both guests: `rw fsck.repair=yes` decides what a boot after a power cut does (the
# initramfs checks the root with `fsck -y`, not `-a`, which stops at the first inconsistency and
# leaves the machine in emergency mode), so the twin must boot as the Pi does.
PI_CMDLINE = "root=LABEL=gwroot rw fsck.repair=yes net.ifnames=0 rootwait"
# what the initramfs needs to check the root at every boot (paths inside its archive)
INITRD_FSCK = ("usr/sbin/fsck", "usr/sbin/fsck.ext4")


def run(cmd: list[str], timeout: float = 600, **kwargs) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


def partitions(image: Path) -> list[tuple[int, int]]:
    """(start, size) in bytes of each partition of a DOS-labelled image."""
    import json

    table = json.loads(run(["sfdisk", "-J", str(image)]))["partitiontable"]
    return [(p["start"] * 512, p["size"] * 512) for p in table["partitions"]]


def extract(image: Path, part: tuple[int, int], out: Path) -> Path:
    start, size = part
    run(["dd", f"if={image}", f"of={out}", "bs=1M", f"skip={start}", f"count={size}",
         "iflag=skip_bytes,count_bytes", "status=none"])
    return out


def debugfs(fs: Path, commands: list[str], write: bool = False) -> str:
    script = fs.with_suffix(".debugfs")
    script.write_text("\n".join(commands) + "\n")
    return run(["debugfs", *(["-w"] if write else []), "-f", str(script), str(fs)])


def authorize_key(root_fs: Path, public_key: Path) -> None:
    """Let root in with the test's key, as an operator's key would be (the only change the test
    makes to the image's root filesystem)."""
    debugfs(root_fs, [
        "mkdir /root/.ssh", f"write {public_key} /root/.ssh/authorized_keys",
        "sif /root/.ssh mode 040700", "sif /root/.ssh/authorized_keys mode 0100600",
        "sif /root/.ssh/authorized_keys uid 0", "sif /root/.ssh/authorized_keys gid 0",
    ], write=True)


def boot_files(root_fs: Path, out: Path) -> tuple[Path, Path]:
    """The newest kernel and initrd installed in the root filesystem."""
    listing = debugfs(root_fs, ["ls -l /boot"])
    names = [line.split()[-1] for line in listing.splitlines() if line.strip()]
    kernel = sorted(n for n in names if n.startswith("vmlinuz-"))[-1]
    initrd = sorted(n for n in names if n.startswith("initrd.img-"))[-1]
    debugfs(root_fs, [f"dump /boot/{kernel} {out / 'vmlinuz'}",
                      f"dump /boot/{initrd} {out / 'initrd.img'}"])
    return out / "vmlinuz", out / "initrd.img"


def initrd_holds(initrd: Path, names: tuple[str, ...]) -> set[str]:
    """Which of `names` (paths inside the archive) the initramfs holds: its compressed cpio
    (gzip or zstd, after any uncompressed early part) unpacked and searched."""
    data = initrd.read_bytes()
    for magic, unpack in ((b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]),
                          (b"\x1f\x8b\x08", ["gzip", "-dcq"])):
        at = data.find(magic)
        if at >= 0:
            data = subprocess.run(unpack, input=data[at:], capture_output=True).stdout
            break
    # a newc entry: "070701", 13 fields of 8 hex digits, then the name and its NUL
    return {n for n in names
            if re.search(rb"070701[0-9A-Fa-f]{104}" + re.escape(n.encode()) + rb"\x00", data)}


@dataclass
class Guest:
    workdir: Path
    arch: str
    kernel: Path
    initrd: Path
    disks: list[Path]
    forwards: dict[int, int] = field(default_factory=dict)  # guest port -> host port (0: any)
    accel: str = "tcg"
    memory_mb: int = 1024

    def __post_init__(self) -> None:
        self.key = self.workdir / "id_ed25519"
        if not self.key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)])
        self.forwards = {g: h or free_port() for g, h in {22: 0, **self.forwards}.items()}
        self.proc: subprocess.Popen | None = None
        self.boots = 0
        self.serial = self.workdir / "serial.log"

    def port(self, guest_port: int) -> int:
        return self.forwards[guest_port]

    def _command(self) -> list[str]:
        nic = ",".join(["user", "model=virtio-net-pci"] + [
            f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.forwards.items()])
        drives = [a for d in self.disks for a in ("-drive", f"file={d},format=raw,if=virtio")]
        if self.arch == "arm64":
            machine = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72"]
            console = "ttyAMA0"
        else:
            machine = ["qemu-system-x86_64"]
            console = "ttyS0"
        return [*machine, "-accel", self.accel, "-smp", "2", "-m", str(self.memory_mb),
                "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", f"{PI_CMDLINE} console={console} quiet systemd.show_status=0",
                *drives, "-nic", nic, "-serial", f"file:{self.serial}", "-monitor", "none",
                "-display", "none"]

    def start(self) -> None:
        self.boots += 1
        if self.serial.exists():
            self.serial.rename(self.workdir / f"serial.{self.boots - 1}.log")
        self.proc = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "qemu.err", "ab"))  # noqa: SIM115

    def console(self) -> str:
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def ssh(self, command: str, timeout: float = 120, check: bool = True) -> str:
        ctl = self.workdir / "ssh.ctl"
        cmd = ["ssh", "-q", "-i", str(self.key), "-p", str(self.port(22)),
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
               "-o", "ControlMaster=auto", "-o", f"ControlPath={ctl}", "-o", "ControlPersist=120",
               "root@127.0.0.1", command]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, (f"guest: {command!r} exited {done.returncode}:\n"
                                          f"{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        return done.stdout

    def wait_up(self, timeout: float) -> None:
        """Until sshd answers a command (the machine has booted to its services)."""
        def probe() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"qemu exited {self.proc.returncode}:\n"
                                     f"{self.console()[-3000:]}")
            return self._answer("echo up", timeout=60) == "up"

        wait_until(probe, bool, timeout=timeout, interval=2, what="the guest's sshd",
                   show=lambda _: self.console()[-3000:])

    def power_cut(self) -> None:
        """SIGKILL to qemu: the disks keep what the guest had written to them, nothing more."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._forget_ssh()

    def reboot(self, timeout: float) -> None:
        """A clean reboot from inside; qemu restarts the machine with the same kernel."""
        self.ssh("systemctl reboot", check=False, timeout=30)
        self._forget_ssh()
        # qemu runs on through the reboot; wait for the old sshd to go before asking the new
        wait_until(lambda: self._answer("echo up", timeout=20),
                   lambda out: out != "up", timeout=120, interval=1, what="the guest to go down")
        self.wait_up(timeout)

    def _answer(self, command: str, timeout: float) -> str:
        """What the guest answers, "" if it does not within `timeout`: qemu's user network
        accepts the connection for a guest that is shutting down and then never says a word."""
        try:
            return self.ssh(command, timeout=timeout, check=False).strip()
        except subprocess.TimeoutExpired:
            return ""

    def _forget_ssh(self) -> None:
        ctl = self.workdir / "ssh.ctl"
        if ctl.exists():
            subprocess.run(["ssh", "-o", f"ControlPath={ctl}", "-O", "exit", "x"],
                           capture_output=True, timeout=10)
            ctl.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._forget_ssh()


def kvm_works() -> bool:
    """KVM is asked for only where /dev/kvm opens; a guest that then hangs is detected by the
    caller's boot timeout and retried under TCG."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def elapsed(since: float) -> str:
    return f"{time.monotonic() - since:.0f} s"
