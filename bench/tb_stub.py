"""The ThingsBoard side of the ThingsBoard IoT gateway peer, as far as the bench needs one.

The gateway asks its server for session limits (an RPC `getSessionLimits` on
`v1/devices/me/rpc/request/{id}`) and sends no telemetry until it has the answer. A plain
mosquitto is the cloud in the bench, so this process answers that one RPC: no rate limits, and an
inflight window of 125 (the gateway applies 80% of it: the bench's window of 100). It prints
`answered` on each answer, which the harness waits for.

Run: `python -m bench.tb_stub PORT`.
"""

from __future__ import annotations

import json
import sys

import paho.mqtt.client as mqtt

LIMITS = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 125,
    "rateLimits": {"messages": "0:0", "telemetryMessages": "0:0", "telemetryDataPoints": "0:0"},
}


def main(argv: list[str]) -> int:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tb-server-stub")

    def on_connect(c, userdata, flags, reason_code, properties) -> None:
        c.subscribe("v1/devices/me/rpc/request/+", 1)

    def on_message(c, userdata, message) -> None:
        request_id = message.topic.rsplit("/", 1)[1]
        try:
            method = json.loads(message.payload).get("method")
        except ValueError:
            return
        if method == "getSessionLimits":
            c.publish(f"v1/devices/me/rpc/response/{request_id}", json.dumps(LIMITS), qos=1)
            print("answered", flush=True)

    client.on_connect = on_connect
    client.on_message = on_message
    client.reconnect_delay_set(0.2, 1)
    client.connect("127.0.0.1", int(argv[0]))
    client.loop_forever(retry_first_connection=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
