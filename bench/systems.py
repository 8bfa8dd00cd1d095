"""The systems under test, each started by the harness: gatewayd and Mosquitto's bridge.

Both sit between the same children and the same cloud mosquitto; both are plain subprocesses
whose CPU time and peak RSS are read from /proc, so that neither is measured by its own claims.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from gateway.cloud_contract import registry_topic
from tests.support.broker import Mosquitto, free_port
from tests.support.clients import new_key, publish_retained, registry_doc
from tests.support.gatewayd import Gatewayd


def child_keys(n: int) -> dict[str, str]:
    return {f"c{i:03d}": new_key() for i in range(n)}


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the highest resident set the process has had since it started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Cloud(Mosquitto):
    """The cloud broker: the project's test mosquitto, persistence on as a real cloud has it."""


class GatewaydSystem:
    name = "gatewayd"

    def __init__(self, workdir: Path, cloud: Cloud, keys: dict[str, str],
                 store: Path | None = None, module: str = "gateway.cli.gatewayd") -> None:
        publish_retained(cloud.port, registry_topic("", "edge-1"), registry_doc(1, keys))
        storage = {"path": str(store)} if store else {}
        self.gw = Gatewayd(workdir, cloud_url=cloud.url, storage=storage)
        self.gw.module = module
        self.keys = keys

    def start(self) -> None:
        self.gw.start()
        self.gw.wait_status(lambda s: s["registry_version"] >= 1, timeout=30, what="registry")

    def wait_online(self, online: bool = True, timeout: float = 30) -> None:
        self.gw.wait_status(lambda s: (s["uplink"]["state"] == "online") == online,
                            timeout=timeout, what=f"uplink online={online}")

    @property
    def port(self) -> int:
        return self.gw.plain_port

    @property
    def pid(self) -> int:
        return self.gw.proc.pid

    def backlog(self) -> int:
        return self.gw.status()["backlog"]["messages"]

    def stop(self) -> None:
        self.gw.close()


BRIDGE_CONF = """user root
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {store}/
{autosave}
max_queued_messages 0
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection cloud
address 127.0.0.1:{cloud_port}
topic devices/# out 1
cleansession false
restart_timeout 1
"""


class MosquittoBridge:
    """Eclipse Mosquitto as most Pi users run it: a local broker bridging to the cloud.

    `autosave_interval=None` keeps mosquitto's default (save every 1800 s and on exit, so a
    kill -9 loses up to half an hour); 1 is the configuration that survives kill -9 within a
    second. max_queued_messages is unlimited in both, or an outage would drop messages. It runs as
    root (`user root`) only so that it can write into the harness's private directories.
    """

    def __init__(self, workdir: Path, cloud: Cloud, autosave: int | None,
                 store: Path | None = None) -> None:
        self.name = "mosquitto" if autosave is None else f"mosquitto-autosave{autosave}"
        self.broker = Mosquitto(workdir, port=free_port())
        self.store = store or workdir / "persist"
        self.store.mkdir(parents=True, exist_ok=True)
        self.broker.conf.write_text(BRIDGE_CONF.format(
            port=self.broker.port, store=self.store, cloud_port=cloud.port,
            autosave="" if autosave is None else f"autosave_interval {autosave}"))

    def start(self) -> None:
        self.broker.start()

    def wait_online(self, online: bool = True, timeout: float = 30) -> None:
        """The bridge says so in its log; mosquitto has no status interface to ask."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.broker.log.read_text(errors="replace")
            if not online or "Connecting bridge (step 2)" in text:
                return
            time.sleep(0.05)
        raise TimeoutError("bridge did not connect")

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def pid(self) -> int:
        return self.broker.proc.pid

    def stop(self) -> None:
        self.broker.stop()
