"""The scenarios of issue 7. Each function runs one system once and returns a dict of figures.

Every run starts its own cloud mosquitto and its own system under test in a fresh directory, so
that rounds are independent and can alternate between systems.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import emulated
from bench.load import PAYLOAD_BYTES, AmqpChild, Child, CloudCounter, payloads, percentile
from bench.systems import (
    Cloud,
    GatewaydSystem,
    MosquittoBridge,
    ThingsBoardGateway,
    child_keys,
    cpu_seconds,
    peak_rss_mib,
    rss_mib,
)
from gateway.storage.store import Store
from gateway.upstream.message import Message
from gateway.upstream.outbox import Outbox
from tests.support.blockdev import LoopFilesystem
from tests.support.gatewayd import Gatewayd

WINDOW = 100  # the gateway's default cloud inflight window; the floor and the children use it too
# Offline, a PUBACK waits for the group commit (every 100 ms), so ingest is bounded by window /
# cadence; the outage children keep 100 each in flight (paho's default is 20) to fill faster.
OUTAGE_WINDOW = 100
DRAIN_COUNTER = "bench-drain-counter"  # its session outlives the cloud's restart
BODIES = payloads()
# `--baseline DIR`: another checkout of gatewayd, run as system "gatewayd-baseline" beside this
# one in the same run, so that a change is measured against its parent under the same load
BASELINE: dict[str, Path] = {}
EMULATED: dict[str, Path] = {}  # "root": an arm64 root the systems under test run in (emulated.py)


def make_system(kind: str, workdir: Path, cloud: Cloud, keys: dict[str, str],
                store: Path | None = None):
    system = _system(kind, workdir, cloud, keys, store)
    root = EMULATED.get("root")
    if root is not None:
        if isinstance(system, GatewaydSystem):  # the baseline too, if its tree is in /tmp
            system.gw.python = emulated.gatewayd(root)
        elif isinstance(system, MosquittoBridge):
            system.broker.command = emulated.mosquitto(root)
        else:
            raise SystemExit(f"bench: {kind} does not run in the arm64 root; choose gatewayd "
                             "and mosquitto with --systems")
    return system


def _system(kind: str, workdir: Path, cloud: Cloud, keys: dict[str, str],
            store: Path | None = None):
    if kind == "gatewayd":
        return GatewaydSystem(workdir / "gw", cloud, keys, store)
    if kind == "gatewayd-baseline":
        system = GatewaydSystem(workdir / "gw", cloud, keys, store)
        tree = BASELINE["tree"]
        system.gw.env["PYTHONPATH"] = str(tree)  # ahead of the installed package
        system.gw.cwd = tree  # `python -m` puts the cwd first: the bench's own tree otherwise
        return system
    # the same daemon, children on another head
    if kind in ("gatewayd-tls", "gatewayd-ws", "gatewayd-amqp"):
        return GatewaydSystem(workdir / "gw", cloud, keys, store, head=kind.split("-")[1])
    if kind == "gatewayd-rocksdb-defaults":
        return GatewaydSystem(workdir / "gw", cloud, keys, store, module="bench.rocksdb_defaults")
    if kind == "thingsboard-gateway":
        return ThingsBoardGateway(workdir / "tb", cloud, store)
    if kind == "mosquitto":
        return MosquittoBridge(workdir / "bridge", cloud, None, store)
    if kind == "mosquitto-autosave1":
        return MosquittoBridge(workdir / "bridge", cloud, 1, store)
    raise ValueError(kind)


async def _children(port: int, keys: dict[str, str], window: int, system=None) -> list[Child]:
    head, ca = getattr(system, "head", "plain"), getattr(system, "ca", None)
    children = [AmqpChild(d, k, port, window, ca) if head == "amqp"
                else Child(d, k, port, window, head, ca) for d, k in keys.items()]
    await asyncio.gather(*(c.connect() for c in children))
    return children


async def _send(children: list[Child], total: int, rate: float = 0.0) -> None:
    per = total // len(children)
    each_rate = rate / len(children) if rate else 0.0
    await asyncio.gather(*(c.run(per, BODIES, each_rate) for c in children))


def sampled_counter(cloud: Cloud, system, keys: dict[str, str],
                    client_id: str | None = None) -> tuple[CloudCounter, float]:
    """A counter at the cloud of every tenth child's messages, and the share of all it sees
    (one in `share`); of every message for a system that batches them into one publish.

    A subscriber to every delivery cost the cloud broker a socket write a message and the
    harness a read per few, and on the 2-core machine that took 35-45% of the speed of
    whichever system was draining (a stored 300,000 drained at 72,000-88,000 msg/s with
    nothing subscribed, at 48,000-49,000 with it). The children send interleaved and at the
    same pace, so the sampled ones' last message comes within a few of the end.
    """
    options = counter_options(system)
    if options.get("entries"):
        return CloudCounter(cloud.port, client_id=client_id, **options), 1.0
    sampled = list(keys)[::10]
    topics = tuple(f"devices/{device}/#" for device in sampled)
    return CloudCounter(cloud.port, topic=topics, client_id=client_id), len(keys) / len(sampled)


def counter_options(system) -> dict:
    """How the cloud counts this system's deliveries: topic, and messages per publish."""
    return dict(getattr(system, "counter", {}))


def run_floor(cloud: Cloud, count: int) -> dict:
    """The paho floor, in its own process. It publishes to the cloud broker itself, so the
    broker's PUBACKs are the delivery: no counter at the cloud adds to the machine's load
    (sampled_counter says how much a full one took)."""

    async def go() -> dict:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.floor", str(cloud.port), str(count), str(WINDOW),
            stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        return json.loads(out)

    figures = asyncio.run(go())
    return {"msgs_per_sec": count / figures["elapsed"], "puback_p50_ms": figures["p50_ms"],
            "puback_p99_ms": figures["p99_ms"], "cpu_us_per_msg": figures["cpu_us_per_msg"],
            "peak_rss_mib": figures["peak_rss_mib"]}


def relay(kind: str, workdir: Path, n_children: int, total: int) -> dict:
    """Scenario 1: N children publish QoS 1 through the system to the cloud, window 100 in all."""
    cloud = Cloud(workdir / "cloud")
    cloud.start()
    try:
        if kind == "paho-floor":
            return run_floor(cloud, total)
        keys = child_keys(n_children)
        system = make_system(kind, workdir, cloud, keys)
        system.start()
        try:
            system.wait_online()
            return asyncio.run(_relay(system, cloud, keys, total))
        finally:
            system.stop()
    finally:
        cloud.stop()


async def _relay(system, cloud: Cloud, keys: dict[str, str], total: int) -> dict:
    counter, share = sampled_counter(cloud, system, keys)
    await counter.connect()
    children = await _children(system.port, keys, max(1, WINDOW // len(keys)), system)
    total -= total % len(children)
    idle_rss = rss_mib(system.pids)  # the children connected, nothing sent or stored yet
    cpu0, t0 = cpu_seconds(system.pids), time.perf_counter()
    await _send(children, total)
    await counter.wait_for(round(total / share), timeout=600)
    t1 = counter.last
    cpu1 = cpu_seconds(system.pids)
    latencies = [x for c in children for x in c.latencies]
    for c in children:
        c.close()
    counter.close()
    return {"msgs_per_sec": total / (t1 - t0),
            "puback_p50_ms": percentile(latencies, 0.5) * 1000,
            "puback_p99_ms": percentile(latencies, 0.99) * 1000,
            "cpu_us_per_msg": (cpu1 - cpu0) / total * 1e6,
            "peak_rss_mib": peak_rss_mib(system.pids), "idle_rss_mib": idle_rss}


def outage(kind: str, workdir: Path, total: int, loopfs: LoopFilesystem | None = None,
           rate: float = 0.0) -> dict:
    """Scenarios 2 and 3 (offline): `total` messages accumulate while the cloud is down, the
    system is killed -9 and restarted (start-up with that backlog), then the cloud returns and the
    backlog drains. With `loopfs` the store sits alone on that device and its writes are counted.
    """
    if kind == "paho-floor":
        cloud = Cloud(workdir / "cloud")
        cloud.start()
        try:
            floor = run_floor(cloud, total)
            return {"drain_msgs_per_sec": floor["msgs_per_sec"],
                    "peak_rss_mib": floor["peak_rss_mib"]}
        finally:
            cloud.stop()
    cloud = Cloud(workdir / "cloud")
    cloud.start()
    keys = child_keys(10)
    store = loopfs.mountpoint / "store" if loopfs else None
    system = make_system(kind, workdir, cloud, keys, store)
    system.start()
    try:
        system.wait_online()
        asyncio.run(enrol_counter(sampled_counter(cloud, system, keys, DRAIN_COUNTER)[0]))
        cloud.stop()
        system.wait_online(False)
        return asyncio.run(_outage(kind, system, cloud, keys, total, loopfs, rate))
    finally:
        system.stop()
        cloud.stop()


async def enrol_counter(counter: CloudCounter) -> None:
    """The drain's counter subscribes before the outage: a system that reconnects as soon as
    the cloud is back may drain a small backlog before the counter is there again, and the
    cloud keeps those messages for the counter's session instead of dropping them."""
    await counter.connect()
    counter.close()


def _device(loopfs: LoopFilesystem | None) -> tuple[int, int]:
    """(bytes written, ext4 journal commits) of the store's own device.

    A loop device does not count flush requests in /sys/block/<dev>/stat, so fsyncs are counted
    where ext4 turns every fsync that has something to persist into a journal commit: the
    transaction count in /proc/fs/jbd2/<dev>-8/info (the 5 s periodic commit is counted too).
    """
    if loopfs is None:
        return 0, 0
    written = loopfs.bytes_written()
    info = Path(f"/proc/fs/jbd2/{Path(loopfs.device).name}-8/info")
    commits = int(info.read_text().split()[0]) if info.exists() else 0
    return written, commits


async def _outage(kind, system, cloud: Cloud, keys, total: int, loopfs, rate: float) -> dict:
    out: dict = {}
    children = await _children(system.port, keys, OUTAGE_WINDOW)
    total -= total % len(children)
    payload_bytes = total * PAYLOAD_BYTES
    dev0, flush0 = _device(loopfs)
    t0 = time.perf_counter()
    await _send(children, total, rate)
    t1 = time.perf_counter()
    for c in children:
        c.close()
    out["ingest_msgs_per_sec"] = total / (t1 - t0)
    if kind.startswith("gatewayd"):
        await asyncio.to_thread(system.gw.wait_status,
                                lambda s: s["outbox"].get("uncommitted", 0) == 0, 30)
        status = system.gw.status()
        out["store_mib"] = status["store_bytes"] / 2**20
        out["peak_rss_mib_ingest"] = peak_rss_mib(system.pids)
    if loopfs:
        dev1, flush1 = _device(loopfs)
        out["wear_ingest"] = (dev1 - dev0) / payload_bytes
        out["flushes_per_sec_ingest"] = (flush1 - flush0) / (t1 - t0)
    restart0, _ = _device(loopfs)
    if kind.startswith("gatewayd"):
        system.gw.kill()
        s0 = time.perf_counter()
        await asyncio.to_thread(system.gw.start)
        out["startup_secs"] = time.perf_counter() - s0
    drain0, flushd0 = _device(loopfs)
    if loopfs:  # WAL replay after the kill -9: a crash's cost, not accumulate-and-drain's
        out["wear_restart"] = (drain0 - restart0) / payload_bytes
    counter, share = sampled_counter(cloud, system, keys, DRAIN_COUNTER)
    cloud.start()
    await counter.connect()
    d0 = time.perf_counter()
    if kind.startswith("gatewayd"):
        while (left := await asyncio.to_thread(system.backlog)) > 0:  # every one acknowledged
            if time.perf_counter() - d0 > 1200:
                raise TimeoutError(f"gatewayd still has {left} messages")
            await asyncio.sleep(0.2)
    await counter.wait_for(round(total / share), timeout=1200, stall=60)  # bridge backoff
    d1 = counter.last  # when the last arrived, not when the poll above saw it
    timeline = [(counter.first - d0, 0)] + [(t - d0, n * share) for t, n in counter.timeline]
    out["peak_rss_mib"] = peak_rss_mib(system.pids)
    counter.close()
    out.update(_ledger_cost(system, total))
    out["time_to_empty_secs"] = d1 - d0
    out["drain_msgs_per_sec"] = total / max(1e-6, d1 - counter.first)
    out["drain_timeline"] = timeline
    if loopfs:
        dev2, flush2 = _device(loopfs)
        out["wear_drain"] = (dev2 - drain0) / payload_bytes
        out["wear_offline"] = out["wear_ingest"] + out["wear_drain"]
        out["flushes_per_sec_drain"] = (flush2 - flushd0) / max(1e-6, d1 - d0)
    return out


def wear_online(kind: str, workdir: Path, total: int, loopfs: LoopFilesystem,
                rate: float = 0.0) -> dict:
    """Scenario 3 (online): device bytes per payload byte with a healthy uplink."""
    cloud = Cloud(workdir / "cloud")
    cloud.start()
    keys = child_keys(10)
    system = make_system(kind, workdir, cloud, keys, loopfs.mountpoint / "store")
    system.start()
    try:
        system.wait_online()

        async def go() -> dict:
            counter = CloudCounter(cloud.port, **counter_options(system))
            await counter.connect()
            children = await _children(system.port, keys, WINDOW // len(keys))
            n = total - total % len(children)
            dev0, flush0 = _device(loopfs)
            t0 = time.perf_counter()
            await _send(children, n, rate)
            await counter.wait_for(n, timeout=600)
            t1 = time.perf_counter()
            if kind.startswith("gatewayd"):
                await asyncio.to_thread(system.gw.wait_status,
                                        lambda s: s["backlog"]["messages"] == 0, 60)
            dev1, flush1 = _device(loopfs)
            for c in children:
                c.close()
            counter.close()
            return {"wear_online": (dev1 - dev0) / (n * PAYLOAD_BYTES),
                    "flushes_per_sec": (flush1 - flush0) / (t1 - t0),
                    "msgs_per_sec": n / (t1 - t0), **_ledger_cost(system, n)}

        return asyncio.run(go())
    finally:
        system.stop()
        cloud.stop()


def _ledger_cost(system, messages: int) -> dict:
    """The loss ledger's own bytes in the store's batches per message (issue 17); its state
    rides in batches written anyway, so this is all it adds. gatewayd with a ledger only."""
    if not hasattr(system, "gw"):
        return {}
    ledger = system.gw.status().get("ledger")
    if not ledger:
        return {}
    return {"ledger_state_bytes_per_msg": ledger["state_bytes"] / max(1, messages),
            "ledger_settlement_bytes_per_msg": ledger["published_bytes"] / max(1, messages)}


def preload(store_path: Path, count: int, batch: int = 20000) -> None:
    """Write `count` stored messages with the gateway's own outbox code, as an outage would."""
    store = Store(store_path)
    outbox = Outbox(store)
    now = int(time.time() * 1000)
    body = BODIES[0]
    written = 0
    while written < count:
        n = min(batch, count - written)
        for _ in range(n):
            outbox.append(Message("c000", now, now + 86_400_000, "", body))
        outbox.commit_now()
        written += n
    store.close()


def startup(workdir: Path, count: int) -> dict:
    """Scenario 4: time from exec to READY=1 with `count` messages stored (cloud unreachable)."""
    store = workdir / "store"
    if not store.exists():
        preload(store, count)
    cloud = Cloud(workdir / "cloud")  # not started: the gateway starts offline, as after a cut
    gw = Gatewayd(workdir / f"gw{time.monotonic_ns()}", cloud_url=cloud.url,
                  storage={"path": str(store)})
    t0 = time.perf_counter()
    gw.start(timeout=300)
    secs = time.perf_counter() - t0
    try:
        backlog = gw.status()["backlog"]["messages"]
        rss = peak_rss_mib(gw.proc.pid)
    finally:
        gw.close()
    return {"startup_secs": secs, "backlog": backlog, "peak_rss_mib": rss,
            "us_per_stored_msg": secs / count * 1e6}
