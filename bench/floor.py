"""The paho floor: one paho-mqtt client publishing straight to the cloud, no gateway at all.

Run as its own process (`python -m bench.floor PORT COUNT WINDOW`) so that its CPU time is its
own. It prints one JSON line: elapsed seconds from the first publish to the last PUBACK, and the
PUBACK latencies' p50/p99. This is what the client library can do with the same window; a gateway
cannot beat it, so the ratio to it says how much the gateway costs.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time

import paho.mqtt.client as mqtt

from bench.load import payloads, percentile


def main(argv: list[str]) -> int:
    port, count, window = int(argv[0]), int(argv[1]), int(argv[2])
    bodies = payloads()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="floor",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    done = threading.Event()
    free = threading.Semaphore(window)

    lock = threading.Lock()  # never held across publish(): paho takes its own locks there
    early: dict[int, float] = {}  # PUBACKs that arrived before publish() returned their mid

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        now = time.perf_counter()
        with lock:
            if mid in sent_at:
                latencies.append(now - sent_at.pop(mid))
            else:
                early[mid] = now
        free.release()
        if len(latencies) + len(early) >= count:
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    topic = "devices/floor/messages/events"
    start = time.perf_counter()
    for i in range(count):
        free.acquire()  # paho's own queue would hold the rest in memory; keep the window honest
        t = time.perf_counter()
        mid = client.publish(topic, bodies[i % len(bodies)], qos=1).mid
        with lock:
            if mid in early:
                latencies.append(early.pop(mid) - t)
            else:
                sent_at[mid] = t
    done.wait()
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"elapsed": elapsed, "p50_ms": percentile(latencies, 0.5) * 1000,
                      "p99_ms": percentile(latencies, 0.99) * 1000,
                      "cpu_us_per_msg": (usage.ru_utime + usage.ru_stime) / count * 1e6,
                      "peak_rss_mib": usage.ru_maxrss / 1024}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
