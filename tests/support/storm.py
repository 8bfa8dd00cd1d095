"""The two children of issue 13's fairness measurement: a storming child, and a bystander.

The storming child (B) runs in its own process (`python -m tests.support.storm`), so that its
paho threads do not take the GIL from the bystander's and bend the bystander's timings. It keeps
`window` requests in flight as fast as the gateway answers — twin reported patches answered by
`$iothub/twin/res/204`, or QoS 1 telemetry answered by PUBACK — prints `ready` once the first
window is answered (the phase's start event), and on `stop` on its stdin prints what it was
served since `ready` as one JSON line (the phase's end event) and exits.

The bystander (A) publishes QoS 1 telemetry at a fixed rate in this process and times every
PUBACK from the `publish()` call, as the application on the device would see it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from .clients import Child

STORM_KINDS = ("twin", "telemetry")


class Storm:
    """One storming child; `answered()` is called by paho's thread for every answer."""

    def __init__(self, kind: str, device_id: str, key: str, port: int, window: int,
                 size: int = 0) -> None:
        self.kind, self.window, self.size = kind, window, size
        self.child = Child(device_id, key, port)
        self.child.client.max_inflight_messages_set(window + 1)
        self.free = threading.Semaphore(window)
        self.served = 0
        self.first_window = threading.Event()
        self._rids = 0
        if kind == "twin":
            self.child.client.on_message = lambda c, u, m: self.answered()
        else:
            self.child.client.on_publish = lambda c, u, mid, rc, p: self.answered()

    def answered(self) -> None:
        self.served += 1
        if self.served >= self.window:
            self.first_window.set()
        self.free.release()

    def connect(self) -> None:
        assert self.child.connect() == 0, f"{self.child.device_id}: CONNACK refused"
        if self.kind == "twin":
            done = threading.Event()
            self.child.client.on_subscribe = lambda *a: done.set()
            self.child.client.subscribe("$iothub/twin/res/#", qos=0)
            assert done.wait(10), "no SUBACK for the twin responses"

    def run(self, stop: threading.Event) -> None:
        """Keep the window full until `stop`; answers come back on paho's thread."""
        i = 0
        while not stop.is_set():
            if not self.free.acquire(timeout=0.1):
                continue
            i += 1
            if self.kind == "twin":
                topic = f"$iothub/twin/PATCH/properties/reported/?$rid={i}"
                body = {"n": i, "state": "storm"}
                if self.size:
                    body["pad"] = "x" * max(0, self.size - len(json.dumps(body)) - 10)
                self.child.client.publish(topic, json.dumps(body), qos=1)
            else:
                self.child.send(i, size=self.size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.storm", description=__doc__)
    p.add_argument("kind", choices=STORM_KINDS)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--size", type=int, default=0, help="pad each request to about this many bytes")
    args = p.parse_args(argv)
    storm = Storm(args.kind, args.device, os.environ["STORM_KEY"], args.port, args.window,
                  args.size)
    storm.connect()
    stop = threading.Event()
    sender = threading.Thread(target=storm.run, args=(stop,), daemon=True)
    sender.start()
    if not storm.first_window.wait(120):
        print(json.dumps({"error": f"first window not answered: {storm.served}"}), flush=True)
        return 1
    start_count, start = storm.served, time.perf_counter()
    print("ready", flush=True)
    sys.stdin.readline()  # "stop", or EOF when the parent goes away
    served, secs = storm.served - start_count, time.perf_counter() - start
    stop.set()
    print(json.dumps({"served": served, "secs": secs, "per_sec": served / secs}), flush=True)
    storm.child.close()
    return 0


class StormProcess:
    """The parent's handle on a storming child: started, `ready` awaited, stopped, read."""

    def __init__(self, kind: str, device_id: str, key: str, port: int, window: int = 64,
                 size: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.storm", kind, "--port", str(port),
             "--device", device_id, "--window", str(window), "--size", str(size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, STORM_KEY=key),
        )

    def wait_ready(self) -> None:
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise AssertionError(f"the storming child did not get going: {line or 'exited'}")

    def stop(self) -> dict:
        """What the storming child was served between `ready` and now."""
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        self.proc.wait(30)
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class BystanderFigures:
    sent: int
    acked: int  # PUBACKed by the end of the phase plus the grace
    p50_ms: float
    p99_ms: float  # a message never PUBACKed in time counts as infinitely late

    def line(self) -> str:
        return (f"{self.acked}/{self.sent} PUBACKs, p50 {self.p50_ms:.1f} ms, "
                f"p99 {self.p99_ms:.1f} ms")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bystander(child: Child, rate: float, secs: float, grace: float = 1.0,
              size: int = 0) -> BystanderFigures:
    """Publish `rate` QoS 1 msg/s for `secs` and time each PUBACK; acks are counted up to
    `grace` after the last publish (later ones are lost to the device that waited).

    The child should allow `rate` messages in flight (set before it connects), so that paho's
    own queue is not what delays them."""
    sent_at: dict[int, float] = {}
    acked_at: dict[int, float] = {}
    changed = threading.Condition()

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        now = time.perf_counter()
        with changed:
            acked_at.setdefault(mid, now)
            changed.notify_all()

    child.client.on_publish = on_publish
    count = int(rate * secs)
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing at `rate`, not synchronisation
        # not under `changed`: paho calls on_publish holding its own lock, which publish() takes
        at = time.perf_counter()
        sent_at[child.send(i, size=size).mid] = at  # its PUBACK may already be in acked_at
    deadline = time.perf_counter() + grace
    with changed:
        changed.wait_for(lambda: len(acked_at) >= count, grace)
        latencies = [acked_at[m] - t if acked_at.get(m, deadline + 1) <= deadline
                     else float("inf") for m, t in sent_at.items()]
    acked = sum(1 for x in latencies if x != float("inf"))
    return BystanderFigures(count, acked, percentile(latencies, 0.5) * 1000,
                            percentile(latencies, 0.99) * 1000)


if __name__ == "__main__":
    sys.exit(main())
