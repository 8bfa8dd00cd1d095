"""The systems under test, each started by the harness: gatewayd, Mosquitto's bridge and the
ThingsBoard IoT gateway.

All sit between the same children and the same cloud mosquitto; all are plain subprocesses whose
CPU time and peak RSS are read from /proc, so that none is measured by its own claims.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from gateway.upstream.cloud_contract import registry_topic
from tests.support.broker import Mosquitto, free_port
from tests.support.clients import new_key, publish_retained, registry_doc
from tests.support.gatewayd import Gatewayd
from tests.support.pki import server_tls


def child_keys(n: int) -> dict[str, str]:
    return {f"c{i:03d}": new_key() for i in range(n)}


def cpu_seconds(pid: int | list[int]) -> float:
    """User + system CPU seconds of a process, or the sum over a system's processes."""
    if isinstance(pid, list):
        return sum(cpu_seconds(p) for p in pid)
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def peak_rss_mib(pid: int | list[int]) -> float:
    """VmHWM: the highest resident set the process has had since it started (summed over a
    system's processes: an upper bound of their peak together)."""
    if isinstance(pid, list):
        return sum(peak_rss_mib(p) for p in pid)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid: int | list[int]) -> float:
    """VmRSS: the resident set now (summed over a system's processes)."""
    if isinstance(pid, list):
        return sum(rss_mib(p) for p in pid)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Cloud(Mosquitto):
    """The cloud broker: the project's test mosquitto, persistence on as a real cloud has it;
    it queues QoS 0 messages for a client whose session it keeps (the drain's counter)."""

    def __init__(self, workdir: Path, **kwargs) -> None:
        super().__init__(workdir, **kwargs)
        with self.conf.open("a") as conf:
            conf.write("queue_qos0_messages true\n")


class GatewaydSystem:
    """`head`: how the children reach it: "plain" MQTT, "tls" (MQTT over TLS, the 8883
    listener), "ws" (MQTT over WebSocket over TLS, the 443 head) or "amqp" (AMQP 1.0 over TLS,
    the 5671 head); `ca` is then the CA the children trust."""

    name = "gatewayd"

    def __init__(self, workdir: Path, cloud: Cloud, keys: dict[str, str],
                 store: Path | None = None, module: str = "gateway.cli.gatewayd",
                 head: str = "plain") -> None:
        publish_retained(cloud.port, registry_topic("", "edge-1"), registry_doc(1, keys))
        storage = {"path": str(store)} if store else {}
        self.head = head
        tls = None
        listen: dict = {}
        self.ca: Path | None = None
        if head != "plain":
            workdir.mkdir(parents=True, exist_ok=True)
            self.ca, cert, key = server_tls(workdir)
            tls = (cert, key)
            if head == "ws":
                self._head_port = free_port()
                listen = {"port": 0, "https_port": self._head_port}
            elif head == "amqp":
                self._head_port = free_port()
                listen = {"port": 0, "amqp_port": self._head_port}
        self.gw = Gatewayd(workdir, cloud_url=cloud.url, storage=storage, tls=tls,
                           listen=listen)
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
        if self.head in ("ws", "amqp"):
            return self._head_port
        return self.gw.tls_port if self.head == "tls" else self.gw.plain_port

    @property
    def pid(self) -> int:
        return self.gw.proc.pid

    @property
    def pids(self) -> list[int]:
        return [self.gw.proc.pid]

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

    @property
    def pids(self) -> list[int]:
        return [self.broker.proc.pid]

    def stop(self) -> None:
        self.broker.stop()


def thingsboard_gateway() -> str | None:
    """The ThingsBoard IoT gateway's executable (BENCH_TB_GATEWAY, or on PATH), if installed.

    It lives in its own venv: it brings a fork of paho-mqtt that must not replace ours
    (`python3 -m venv DIR && DIR/bin/pip install thingsboard-gateway==3.8.5`)."""
    return os.environ.get("BENCH_TB_GATEWAY") or shutil.which("thingsboard-gateway")


class ThingsBoardGateway:
    """The ThingsBoard IoT gateway (Python, PyPI) as a peer: a local mosquitto without
    persistence takes the children's publishes, the gateway's MQTT connector subscribes to it and
    forwards through its SQLite storage to the cloud, as ThingsBoard gateway telemetry
    (`v1/gateway/telemetry`, several messages per publish). Its logs are at WARNING so that
    logging does not weigh on it. CPU and RSS are the gateway's plus its local broker's.

    Its promise is weaker than gatewayd's: the local broker PUBACKs the child at once and the
    connector takes messages into memory queues before its storage, so a kill -9 loses what is
    queued; only the relay and wear scenarios run it.
    """

    name = "thingsboard-gateway"

    def __init__(self, workdir: Path, cloud: Cloud, store: Path | None = None) -> None:
        self.workdir = workdir
        self.cloud = cloud
        self.config = workdir / "tb-config"
        self.config.mkdir(parents=True, exist_ok=True)
        self.store = store or workdir / "tb-data"
        self.store.mkdir(parents=True, exist_ok=True)
        self.broker = Mosquitto(workdir / "local", port=free_port())
        text = self.broker.conf.read_text().replace("persistence true", "persistence false")
        self.broker.conf.write_text(text)
        self._write_config()
        self.proc: subprocess.Popen | None = None
        self.stub: subprocess.Popen | None = None
        self.counter = {"topic": "v1/gateway/telemetry", "entries": thingsboard_entries}

    def _write_config(self) -> None:
        no_limit = "0:0"
        gateway = {
            "thingsboard": {
                "host": "127.0.0.1", "port": self.cloud.port, "remoteShell": False,
                "remoteConfiguration": False, "statistics": {"enable": False},
                "deviceFiltering": {"enable": False}, "maxPayloadSizeBytes": 8196,
                "minPackSendDelayMS": 50, "minPackSizeToSend": 500,
                "checkConnectorsConfigurationInSeconds": 3600, "handleDeviceRenaming": False,
                "security": {"type": "accessToken", "accessToken": "bench"}, "qos": 1,
                "reportStrategy": {"type": "ON_RECEIVED"},
                "checkingDeviceActivity": {"checkDeviceInactivity": False},
                **{key: no_limit for key in (
                    "rateLimits", "dpRateLimits", "messagesRateLimits",
                    "deviceMessagesRateLimits", "deviceRateLimits", "deviceDpRateLimits")},
            },
            "storage": {"type": "sqlite", "data_file_path": f"{self.store}/",
                        "messages_ttl_check_in_hours": 1, "messages_ttl_in_days": 7,
                        "max_read_records_count": 100},
            "grpc": {"enabled": False},
            "connectors": [{"type": "mqtt", "name": "children", "configuration": "mqtt.json"}],
        }
        values = [{"type": t, "key": k, "value": f"${{{k}}}"}
                  for t, k in (("integer", "i"), ("double", "temp"), ("double", "hum"),
                               ("string", "pad"))]
        connector = {
            "broker": {"host": "127.0.0.1", "port": self.broker.port, "clientId": "tb-gateway",
                       "version": 5, "maxMessageNumberPerWorker": 10, "maxNumberOfWorkers": 100,
                       "cleanSession": False, "cleanStart": False,
                       "sessionExpiryInterval": 604800, "security": {"type": "anonymous"}},
            "mapping": [{
                "topicFilter": "devices/+/messages/events/", "subscriptionQos": 1,
                "converter": {
                    "type": "json", "sendDataOnlyOnChange": False, "timeout": 60000,
                    "deviceInfo": {
                        "deviceNameExpressionSource": "topic",
                        "deviceNameExpression": "(?<=devices/)(.*?)(?=/messages)",
                        "deviceProfileExpressionSource": "constant",
                        "deviceProfileExpression": "default"},
                    "attributes": [], "timeseries": values}}],
            "requestsMapping": {},
        }
        (self.config / "tb_gateway.json").write_text(json.dumps(gateway, indent=1))
        (self.config / "mqtt.json").write_text(json.dumps(connector, indent=1))
        (self.config / "logs.json").write_text(json.dumps(_quiet_logging(self.workdir / "logs")))

    def start(self) -> None:
        self.broker.start()
        self.stub_out = self.workdir / "stub.out"
        self.stub = subprocess.Popen([sys.executable, "-m", "bench.tb_stub", str(self.cloud.port)],
                                     stdout=self.stub_out.open("wb"), stderr=subprocess.STDOUT)
        env = dict(os.environ, TB_GW_CONFIG_DIR=f"{self.config}/")
        self.proc = subprocess.Popen([thingsboard_gateway() or "thingsboard-gateway"],
                                     cwd=self.workdir, env=env,
                                     stdout=(self.workdir / "tb.out").open("wb"),
                                     stderr=subprocess.STDOUT)

    def wait_online(self, online: bool = True, timeout: float = 60) -> None:
        """Online once the server stub has answered the session-limits request (the gateway
        sends nothing before); offline is not observable from outside and not waited for."""
        deadline = time.monotonic() + timeout
        while online and time.monotonic() < deadline:
            if b"answered" in self.stub_out.read_bytes():
                time.sleep(1.0)  # its connector subscribes to the local broker in parallel
                return
            time.sleep(0.05)
        if online:
            raise TimeoutError("the ThingsBoard gateway did not ask for its session limits")

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, self.broker.proc.pid]

    def stop(self) -> None:
        for proc in (self.proc, self.stub):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.broker.stop()


def thingsboard_entries(payload: bytes) -> int:
    """ThingsBoard gateway telemetry carries several messages: {"device": [{ts, values}...]}."""
    try:
        return sum(len(entries) for entries in json.loads(payload).values())
    except (ValueError, AttributeError, TypeError):
        return 0


def _quiet_logging(directory: Path) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    handler = {"class": "logging.FileHandler", "filename": str(directory / "tb.log"),
               "level": "WARNING"}
    return {"version": 1, "disable_existing_loggers": False,
            "handlers": {"file": handler},
            "root": {"level": "WARNING", "handlers": ["file"]}}
