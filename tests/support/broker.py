"""A real mosquitto, started by the test as the cloud broker.

Persistence is on (with the file in the test's directory), so that stopping and restarting the
broker is a real outage: sessions and queued messages survive it, exactly as a cloud would keep
them. mosquitto runs as the test's own user: started as root it would otherwise drop to the
`mosquitto` user, which cannot write the test's directory, and a restart would silently lose
every session. Each stop checks that the broker did save, so no test can pass on a broker that
forgot. Readiness is awaited by mosquitto's own log line, not by sleeping.
"""

from __future__ import annotations

import getpass
import random
import re
import shutil
import socket
import subprocess
from pathlib import Path

from .wait import wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_turn: int | None = None  # where free_port goes on; random at the first call


def free_port() -> int:
    """A free port below the kernel's ephemeral range, never the same twice in one cycle of it.

    A port the kernel handed out (bind to 0) is one it also hands to outgoing connections: while
    a broker or a daemon is down for a restart, a client's connect could take its port (even
    connect to itself on it), and the restart failed with 'Address already in use'.
    The ports go in turn from a random start rather than at random: a test that makes fifty
    gateways before it starts any would otherwise give two of them the same port (free when
    checked, neither bound yet) in about one run of ten.
    """
    global _turn
    low = _ephemeral_range()[0]
    first = max(1024, low - 12000)
    size = low - first
    if _turn is None:
        _turn = random.randrange(size)
    for _ in range(size):
        port = first + _turn % size
        _turn += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{low - 1}")


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None,
                 acl: list[str] | None = None, tls: tuple[Path, Path] | None = None,
                 password_file: Path | None = None,
                 options: dict[str, str] | None = None, packet_log: bool = False) -> None:
        """`packet_log` logs every packet (mosquitto's `log_type debug`), which
        `qos1_exchange` reads; off by default, as it costs a line a message."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self._holder: socket.socket | None = None
        self.command = [MOSQUITTO]  # the bench runs an arm64 root's under qemu-user
        lines = [f"listener {self.port} 127.0.0.1"]
        if tls is not None:
            lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        if password_file is not None:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines += ["allow_anonymous true"]
        if acl is not None:  # e.g. ["topic deny a/b", "topic readwrite #"] for anonymous
            acl_file = self.workdir / "acl"
            acl_file.write_text("\n".join(acl) + "\n")
            lines += [f"acl_file {acl_file}"]
        lines += [
            f"user {getpass.getuser()}",  # no drop to a user that cannot save
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 0",
            f"max_queued_messages {(options or {}).get('max_queued_messages', 0)}",
            f"max_inflight_messages {(options or {}).get('max_inflight_messages', 0)}",
            "log_dest stderr",
            *(f"log_type {kind}" for kind in ("error", "warning", "notice", "information")),
            *(["log_type debug"] if packet_log else []),
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _setting(self, name: str) -> str | None:
        for line in self.conf.read_text().splitlines():
            if line.startswith(name + " "):
                return line.split(None, 1)[1].strip()
        return None

    @property
    def db(self) -> Path:
        """The persistence file mosquitto writes when it stops, where its configuration puts it
        (the bench's bridge writes a configuration of its own)."""
        return Path(self._setting("persistence_location") or self.workdir) / "mosquitto.db"

    def start(self, timeout: float = 10.0) -> None:
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        start_offset = self._log_offset = self.log.stat().st_size
        self.proc = subprocess.Popen(
            [*self.command, "-c", str(self.conf)], stdout=self._log_file, stderr=self._log_file
        )

        def running() -> bytes:
            text = self.log.read_bytes()[start_offset:]
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {text.decode(errors='replace')}")
            return text

        def ready(text: bytes) -> bool:
            return b"running" in text and b"Opening ipv4 listen socket" in text

        wait_until(running, ready, timeout=timeout, interval=0.02,
                   what="mosquitto to report running",
                   show=lambda text: text.decode(errors="replace"))

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file, like a cloud going down cleanly.

        Asserts that it did, so that a restart really brings back the sessions and queued
        messages the tests rely on.
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
            self._log_file.close()
            self.assert_saved()
            self._hold_port()
        self.proc = None

    def _hold_port(self) -> None:
        """Keep the port bound (not listening: clients are refused as by a dead broker) until
        the restart, so that no other test's process can take it meanwhile."""
        self._holder = socket.socket()
        self._holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._holder.bind(("127.0.0.1", self.port))

    def assert_saved(self) -> None:
        """The last run saved its persistence file without error (if it was asked to keep
        one: a bench peer's local broker may run without)."""
        if self._setting("persistence") != "true":
            return
        text = self.log.read_bytes()[self._log_offset:].decode(errors="replace")
        assert "Error saving" not in text, f"mosquitto could not persist:\n{text}"
        assert "Saving in-memory database" in text, f"mosquitto did not save:\n{text}"
        assert self.db.exists(), f"no persistence file {self.db} after a stop:\n{text}"

    def qos1_exchange(self, client_id: str) -> tuple[int, int]:
        """(QoS 1 PUBLISHes this run sent to `client_id`, PUBACKs it got back), read from the
        packet log. Equal means the broker has let go of every one: a client killed now is
        sent none of them again."""
        assert "log_type debug" in self.conf.read_text(), "a broker made with packet_log=True"
        text = self.log.read_bytes()[self._log_offset:].decode(errors="replace")
        sent = len(re.findall(rf"Sending PUBLISH to {re.escape(client_id)} \(d\d, q1,", text))
        return sent, text.count(f"Received PUBACK from {client_id} ")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"
