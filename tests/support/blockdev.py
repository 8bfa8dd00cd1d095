"""A store on its own small filesystem on a loop device, and that device's own write counters.

/proc/<pid>/io write_bytes over-counts on some kernels (large page-cache folios), and a shared
disk mixes in everyone else's writes. A loop device that holds only the store counts exactly what
reached the "card": sectors written, from /sys/block/<dev>/stat, after a sync of that filesystem.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

SECTOR = 512
_libc = ctypes.CDLL(None, use_errno=True)


# mkfs.ext4 features and mount options: "default" is what CI's loop disks have always been (a
# journal, the kernel's 5 s commit); "image" is the Pi image's root (image-build/build-image.sh
# and its fstab; commit= is a journal's setting, which ext4 without one refuses at mount),
# "image-journal" the same with a journal committed every 60 s, to weigh what a journal costs
FILESYSTEMS = {
    "default": ([], "defaults"),
    "image": (["-O", "^has_journal"], "noatime"),
    "image-journal": (["-O", "has_journal"], "noatime,commit=60"),
}


class LoopFilesystem:
    def __init__(self, workdir: Path, size_mib: int = 512, profile: str = "default") -> None:
        features, options = FILESYSTEMS[profile]
        self.profile = profile
        self.image = workdir / "store.img"
        self.mountpoint = workdir / "mnt"
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        self.device = subprocess.run(
            ["losetup", "--find", "--show", str(self.image)],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", *features, "-E", "lazy_itable_init=0,lazy_journal_init=0",
             self.device],
            check=True,
        )
        # no lazy init: ext4 would otherwise zero its inode tables in the background after
        # mounting, and those writes would be counted against the store
        subprocess.run(["mount", "-o", options, self.device, str(self.mountpoint)], check=True)

    def sectors_written(self) -> int:
        """Sectors the device has written, after pushing the filesystem's dirty pages to it."""
        fd = os.open(self.mountpoint, os.O_RDONLY)
        try:
            if _libc.syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)
        name = Path(self.device).name
        fields = Path(f"/sys/block/{name}/stat").read_text().split()
        return int(fields[6])

    def bytes_written(self) -> int:
        return self.sectors_written() * SECTOR

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)
        subprocess.run(["losetup", "-d", self.device], check=False)
