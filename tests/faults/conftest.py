"""A site for the fault tests: a real mosquitto cloud, a registry of children, one gatewayd with a
TLS, a plain, a WebSocket (443 head) and an AMQP (5671 head) listener, and a sampler of the
daemon's resident memory."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.support.broker import Mosquitto, free_port
from tests.support.clients import new_key
from tests.support.gatewayd import Gatewayd
from tests.support.pki import server_tls
from tests.support.synced import synced_gateway


class RssSampler:
    """Samples a process's RSS every 20 ms in a thread; `peak` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.peak = self.baseline = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self._proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Site:
    cloud: Mosquitto
    gw: Gatewayd
    keys: dict[str, str]
    ca_file: Path
    rss: RssSampler
    ws_port: int  # listen.https_port: the 443 head (MQTT over WebSocket)
    amqp_port: int  # listen.amqp_port: the 5671 head (AMQP 1.0)
    counts: dict[str, int] = field(default_factory=dict)  # bad inputs tried, by kind


def make_tls(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1: (ca, cert, key) files."""
    return server_tls(workdir)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One gateway for a whole module of hostile cases: it must survive all of them in a row."""
    root = tmp_path_factory.mktemp("site")
    cloud = Mosquitto(root / "cloud")
    cloud.start()
    keys = {f"good-{n}": new_key() for n in range(4)}
    keys.update({f"victim-{n}": new_key() for n in range(4)})
    ca, crt, kfile = make_tls(root)
    ws_port, amqp_port = free_port(), free_port()
    gw = synced_gateway(cloud, functools.partial(Gatewayd, root / "gw"), keys, tls=(crt, kfile),
                        listen={"max_connections": 16, "connect_timeout_secs": 3,
                                "https_port": ws_port, "amqp_port": amqp_port})
    s = Site(cloud, gw, keys, ca, RssSampler(gw.proc.pid), ws_port, amqp_port)
    yield s
    s.rss.stop()
    gw.close()
    cloud.stop()
