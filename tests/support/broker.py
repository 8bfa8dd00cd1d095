"""A real mosquitto, started by the test as the cloud broker.

Persistence is on (with the file in the test's directory), so that stopping and restarting the
broker is a real outage: sessions and queued messages survive it, exactly as a cloud would keep
them. Readiness is awaited by mosquitto's own log line, not by sleeping.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None,
                 acl: list[str] | None = None, tls: tuple[Path, Path] | None = None,
                 password_file: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self.conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence true",
                    f"persistence_location {self.workdir}/",
                    "autosave_interval 0",
                    "max_queued_messages 0",
                    "max_inflight_messages 0",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "",
                ]
            )
        )
        extra = []
        if tls is not None or password_file is not None:
            # mosquitto started as root reads these after dropping to its own user
            shared = Path(tempfile.mkdtemp(prefix="mosq-files", dir="/tmp"))
            shared.chmod(0o755)
            for source in [*(tls or ()), *([password_file] if password_file else [])]:
                target = shared / Path(source).name
                target.write_bytes(Path(source).read_bytes())
                target.chmod(0o644)
            if tls is not None:
                extra += [f"certfile {shared / Path(tls[0]).name}",
                          f"keyfile {shared / Path(tls[1]).name}"]
            if password_file is not None:
                extra += ["allow_anonymous false",
                          f"password_file {shared / Path(password_file).name}"]
            text = self.conf.read_text()
            if password_file is not None:
                text = text.replace("allow_anonymous true\n", "")
            self.conf.write_text(text.replace(f"listener {self.port} 127.0.0.1\n",
                                              f"listener {self.port} 127.0.0.1\n"
                                              + "\n".join(extra) + "\n"))
        if acl is not None:  # e.g. ["topic deny a/b", "topic readwrite #"] for anonymous
            # mosquitto started as root reads the ACL after dropping to its own user
            acl_dir = Path(tempfile.mkdtemp(prefix="mosq-acl", dir="/tmp"))
            acl_dir.chmod(0o755)
            acl_file = acl_dir / "acl"
            acl_file.write_text("\n".join(acl) + "\n")
            acl_file.chmod(0o644)
            with self.conf.open("a") as conf:
                conf.write(f"acl_file {acl_file}\n")

    def start(self, timeout: float = 10.0) -> None:
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        start_offset = self.log.stat().st_size
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=self._log_file, stderr=self._log_file
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[start_offset:]
            if b"running" in text and b"Opening ipv4 listen socket" in text:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {text.decode(errors='replace')}")
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not report running")

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file, like a cloud going down cleanly."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"
