"""gatewayd as a real subprocess: started with a config the test writes, killed with SIGKILL.

Readiness is systemd's own protocol: the test binds a NOTIFY_SOCKET and waits for READY=1, which
the daemon sends only once the store is open and the listeners are bound.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.daemon import allocator
from gateway.daemon.control import request

from .broker import free_port
from .wait import wait_until

HUB = "hub.example.net"


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_toml(path: Path, sections: dict[str, dict]) -> None:
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
        lines.append("")
    path.write_text("\n".join(lines))


class Gatewayd:
    def __init__(self, workdir: Path, cloud_url: str = "", gateway_id: str = "edge-1",
                 tls: tuple[Path, Path] | None = None, **overrides: dict) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sockdir = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
        self.gateway_id = gateway_id
        self.plain_port = free_port()
        self.tls_port = free_port() if tls else 0
        self.store = self.workdir / "store"
        self.control = self.sockdir / "control.sock"
        self.stderr_path = self.workdir / "gatewayd.log"
        sections = {
            "gateway": {"id": gateway_id, "hub_hostname": HUB},
            "listen": {"host": "127.0.0.1", "port": self.tls_port, "plain_port": self.plain_port},
            "storage": {"path": str(self.store), "time_to_live_secs": 7200},
            "cloud": {"url": cloud_url, "reconnect_min_secs": 0.2, "reconnect_max_secs": 1.0},
            "control": {"socket": str(self.control)},
        }
        if tls:
            sections["listen"]["tls_cert"] = str(tls[0])
            sections["listen"]["tls_key"] = str(tls[1])
        for section, keys in overrides.items():
            sections.setdefault(section, {}).update(keys)
        self.config = self.workdir / "gatewayd.toml"
        write_toml(self.config, sections)
        self.proc: subprocess.Popen | None = None
        self.module = "gateway.cli.gatewayd"  # the bench runs a variant with other store options
        # the interpreter: the bench runs an arm64 root's under qemu-user (bench/emulated.py)
        self.python = [sys.executable]
        self.env: dict[str, str] = {}  # extra environment of every start, e.g. an LD_PRELOAD
        # the directory it starts in: `python -m` puts it first on sys.path, ahead of
        # PYTHONPATH, so the bench's baseline starts in its own tree (None: the caller's)
        self.cwd: Path | None = None

    def start(self, timeout: float = 30.0, env: dict | None = None) -> None:
        notify_path = self.sockdir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(timeout)
        # as systemd/gatewayd.service starts it: its notify socket and glibc's tunables
        full_env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONUNBUFFERED="1",
                        GLIBC_TUNABLES=":".join(allocator.TUNABLES))
        full_env.update(self.env)
        full_env.update(env or {})
        self._stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [*self.python, "-m", self.module, "--config", str(self.config)],
            stdout=self._stderr, stderr=self._stderr, env=full_env, cwd=self.cwd,
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    datagram = notify.recv(4096).decode()
                except TimeoutError:
                    break
                if "READY=1" in datagram.split("\n"):
                    return
            raise RuntimeError(f"gatewayd not ready; log:\n{self.log_text()}")
        finally:
            notify.close()

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash or an OOM kill."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.terminate()
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def status(self) -> dict:
        return request(self.control, "status")

    def wait_status(self, predicate, timeout: float = 30.0, what: str = "condition") -> dict:
        """Poll the daemon's status until `predicate(status)` holds (an event, not a sleep)."""
        return wait_until(self.status, predicate, timeout=timeout, what=what)

    def wait_log(self, text: str, timeout: float = 20.0) -> str:
        """The journal once it holds `text`: lines the daemon writes after an event it reports
        nowhere else (a reload, a refusal) are awaited here, not slept for."""
        return wait_until(self.log_text, lambda log: text in log, timeout=timeout,
                          what=f"{text!r} in the journal", show=lambda log: log[-2000:])

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """Run the real `gatewayctl` against this daemon's configuration."""
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli.gatewayctl", *args, "--config", str(self.config)],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done

    def log_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
