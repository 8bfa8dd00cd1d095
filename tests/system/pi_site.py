"""What the image tests share: building the .deb and the image, and one gateway site around a
booted guest (the cloud on the host, a child dialling in through the forwarded port)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

from tests.support.clients import Child, new_key, publish_retained, registry_doc
from tests.support.wait import wait_until
from tests.system.guest import (
    HOST_FROM_GUEST,
    Guest,
    authorize_key,
    boot_files,
    extract,
    partitions,
    run,
)

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_ID = "pi-gw"
CHILD_PORT = 1883  # gatewayd's plain port in the guest, forwarded to the host
TOOLS = ("mmdebstrap", "dpkg-buildpackage", "mkfs.vfat", "mcopy", "sfdisk", "debugfs", "ssh")


def missing_tools(*extra: str) -> list[str]:
    return [t for t in (*TOOLS, *extra) if shutil.which(t) is None]


def build_deb(arch: str, out: Path) -> Path:
    """debian/build-deb.sh --arch ARCH, the .deb copied to `out`."""
    printed = run([str(ROOT / "debian" / "build-deb.sh"), "--arch", arch], timeout=900)
    deb = Path(printed.strip().splitlines()[-1])
    return Path(shutil.copy(deb, out))


def prebuilt(arch: str) -> Path | None:
    """GATEWAYD_TEST_IMAGES=DIR with gatewayd-ARCH.img in it skips the build (for a developer
    re-running a boot test; CI always builds)."""
    folder = os.environ.get("GATEWAYD_TEST_IMAGES")
    image = Path(folder) / f"gatewayd-{arch}.img" if folder else None
    return image if image is not None and image.exists() else None


def build_image(arch: str, deb: Path, out: Path, size: str) -> Path:
    print(run([str(ROOT / "image-build" / "build-image.sh"), "--arch", arch, "--deb", str(deb),
               "--out", str(out), "--size", size], timeout=2400))
    return out


def site_config(cloud_port: int) -> str:
    """The gatewayd.toml an operator puts in the boot partition's gatewayd/ folder."""
    return "\n".join([
        "[gateway]", f'id = "{GATEWAY_ID}"', 'hub_hostname = "hub.example.net"', "",
        "[listen]", 'host = "0.0.0.0"', "port = 8883", f"plain_port = {CHILD_PORT}",
        'tls_cert = "/etc/gatewayd/gateway.pem"', 'tls_key = "/etc/gatewayd/gateway.key"', "",
        "[storage]", 'path = "/var/lib/gatewayd"', "time_to_live_secs = 604800", "",
        "[cloud]", f'url = "mqtt://{HOST_FROM_GUEST}:{cloud_port}"', "reconnect_max_secs = 2",
        "",
    ])


def prepare_guest(image: Path, workdir: Path, arch: str, cloud_port: int, accel: str) -> Guest:
    """The image's partitions as the guest's disks, with the site's settings in the boot
    partition (as an operator puts them there from a PC) and the test's SSH key."""
    workdir.mkdir(parents=True, exist_ok=True)
    boot_part, root_part = partitions(image)
    boot = extract(image, boot_part, workdir / "boot.vfat")
    root = extract(image, root_part, workdir / "root.ext4")
    conf = workdir / "gatewayd.toml"
    conf.write_text(site_config(cloud_port))
    run(["mcopy", "-o", "-i", str(boot), str(conf), "::/gatewayd/gatewayd.toml"])
    guest = Guest(workdir, arch, *boot_files(root, workdir), disks=[root, boot],
                  forwards={CHILD_PORT: 0}, accel=accel)
    authorize_key(root, guest.key.with_suffix(".pub"))
    return guest


def register_child(cloud_port: int, device: str = "pi-child", others: int = 0
                   ) -> tuple[str, str, dict[str, str]]:
    """The child the test drives, and `others` more (device: key) in the same registry."""
    key = new_key()
    rest = {f"pi-extra-{n}": new_key() for n in range(others)}
    publish_retained(cloud_port, f"gateways/{GATEWAY_ID}/registry",
                     registry_doc(1, {device: key, **rest}))
    return device, key, rest


def memory_mib(guest: Guest) -> dict[str, float]:
    """gatewayd's VmRSS and VmHWM (its peak) in the guest, MiB."""
    pid = guest.ssh("systemctl show -p MainPID --value gatewayd").strip()
    lines = guest.ssh(f"grep -E 'VmRSS|VmHWM' /proc/{pid}/status").splitlines()
    return {name: int(value.split()[0]) / 1024
            for name, value in (line.split(":", 1) for line in lines)}


def rss_mib(guest: Guest) -> float:
    """gatewayd's VmRSS in the guest, MiB."""
    return memory_mib(guest)["VmRSS"]


def status(guest: Guest) -> dict:
    return json.loads(guest.ssh("gatewayctl status --json"))


def wait_status(guest: Guest, predicate, what: str, timeout: float = 300) -> dict:
    def probe() -> dict:
        out = guest.ssh("gatewayctl status --json", check=False, timeout=60)
        try:
            return json.loads(out)
        except ValueError:
            return {}

    return wait_until(probe, lambda d: bool(d) and predicate(d), timeout=timeout, interval=1,
                      what=what)


def backlog(doc: dict) -> int:
    return doc["backlog"]["messages"]


def online(doc: dict) -> bool:
    return doc["uplink"]["state"] == "online"


def active(guest: Guest, timeout: float = 300) -> None:
    wait_until(lambda: guest.ssh("systemctl is-active gatewayd", check=False).strip(),
               lambda s: s == "active", timeout=timeout, interval=1,
               what="gatewayd active in the guest")


def child(guest: Guest, device: str, key: str) -> Child:
    c = Child(device, key, guest.port(CHILD_PORT))
    assert c.connect(timeout=60) == 0
    return c


class Sender(threading.Thread):
    """A child sending QoS 1 telemetry in small batches, each batch awaited, until told to stop
    or until the gateway goes away under it (a power cut). `acked` holds the message numbers
    whose PUBACK arrived: what the gateway promised to keep."""

    def __init__(self, c: Child, first: int, batch: int = 10) -> None:
        super().__init__(daemon=True)
        self.c, self.next, self.batch = c, first, batch
        self.by_mid: dict[int, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            mids = []
            for _ in range(self.batch):
                info = self.c.send(self.next)
                self.by_mid[info.mid] = self.next
                mids.append(info.mid)
                self.next += 1
            try:
                self.c.wait_acked(mids, timeout=30)
            except AssertionError:
                return  # the gateway is gone: what was acked stays acked

    def acked(self) -> set[int]:
        with self.c._acked_changed:
            return {self.by_mid[m] for m in self.c.acked if m in self.by_mid}

    def wait_acked_count(self, n: int, timeout: float) -> None:
        wait_until(lambda: len(self.acked()), lambda k: k >= n, timeout=timeout, interval=0.02,
                   what=f"{n} PUBACKs")
