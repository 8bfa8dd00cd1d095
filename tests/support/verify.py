"""`gatewayctl verify --follow --json` as the operator runs it: a subprocess, its JSON lines read
by a thread, stopped with SIGTERM for its final line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

from .wait import wait_until


class Verify:
    def __init__(self, cloud_url: str, *gateways: str, since: int | None = None) -> None:
        args = [sys.executable, "-m", "gateway.cli.gatewayctl", "verify", *gateways, "--follow",
                "--json", "--cloud", cloud_url]
        if since is not None:
            args += ["--since", str(since)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[dict] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # its first line comes once it is subscribed
        wait_until(lambda: self.lines or self.proc.poll() is not None, timeout=30,
                   what="gatewayctl verify to subscribe")
        assert self.proc.poll() is None, self.proc.stderr.read()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(json.loads(line))

    def latest(self, gateway: str = "edge-1") -> dict:
        with self._lock:
            mine = [line for line in self.lines if line["gateway"] == gateway]
        return mine[-1] if mine else {}

    def wait(self, predicate, gateway: str = "edge-1", timeout: float = 60.0,
             what: str = "accounts") -> dict:
        return wait_until(lambda: self.latest(gateway), lambda a: bool(a) and predicate(a),
                          timeout=timeout, interval=0.1, what=what)

    def pause(self) -> None:
        """SIGSTOP: the process stops reading, the broker's queue for it fills.

        The stop takes hold only when the kernel next runs the process: on a loaded machine
        that can be late enough for it to read and acknowledge one more message. waitpid with
        WUNTRACED returns once every thread of it has stopped.
        """
        self.proc.send_signal(signal.SIGSTOP)
        _, status = os.waitpid(self.proc.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            raise AssertionError(f"verify ended instead of stopping: {self.proc.stderr.read()}")

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def finish(self, gateway: str = "edge-1") -> tuple[int, dict]:
        """SIGTERM; (exit status, the final accounts of `gateway`)."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._reader.join(10)
        with self._lock:
            final = [line for line in self.lines if line["gateway"] == gateway and line["final"]]
        assert final, f"no final line; stderr: {self.proc.stderr.read()}"
        return code, final[-1]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
