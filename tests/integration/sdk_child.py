"""Run by the Azure IoT device SDK's own interpreter (it pins paho-mqtt < 2, so it has its venv).

argv: connection string, CA file, device id, count, and optionally "websockets" (MQTT over
WebSocket on 443, the SDK's `websockets=True`) and "--acked=PATH". Sends `count` messages with a
custom property and JSON content type, exactly as a device application would, then exits 0.

With `--acked=PATH` the client keeps the SDK's own connection retry on (it rides out a gateway
that is killed and restarted under it), sends at a sensor's pace so that a kill finds it in the
middle, and appends each i to PATH, synced, once `send_message` has returned: what the SDK had
acknowledged survives whatever happens to this process.
"""

import json
import os
import sys
import time

from azure.iot.device import IoTHubDeviceClient, Message


def append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def main() -> int:
    conn_str, ca_file, device_id, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    extra = sys.argv[5:]
    websockets = "websockets" in extra
    acked = next((a.removeprefix("--acked=") for a in extra if a.startswith("--acked=")), None)
    with open(ca_file) as f:
        ca = f.read()
    client = IoTHubDeviceClient.create_from_connection_string(
        conn_str, server_verification_cert=ca, connection_retry=acked is not None,
        websockets=websockets
    )
    client.connect()
    for i in range(count):
        msg = Message(json.dumps({"device": device_id, "i": i}))
        msg.content_type = "application/json"
        msg.content_encoding = "utf-8"
        msg.custom_properties["temperature"] = "21.5"
        msg.custom_properties["site name"] = "north/gate"
        send(client, msg, retry=acked is not None)  # returns once the gateway's PUBACK came
        if acked is not None:
            append(acked, str(i))
            time.sleep(0.02)  # a sensor's pace, not synchronisation
    client.shutdown()
    return 0


def send(client, msg, retry: bool) -> None:
    """Send; with retry on, a send the SDK gives up on while the gateway restarts (its own
    reconnect can lose that race: ConnectionFailedError, or NoConnectionError when the send
    is issued between its disconnect and its reconnect) is sent again, as a device application
    does. Nothing is recorded acknowledged until a send has returned."""
    from azure.iot.device.exceptions import (
        ConnectionDroppedError,
        ConnectionFailedError,
        NoConnectionError,
        OperationCancelled,
        OperationTimeout,
    )

    gave_up = (ConnectionFailedError, ConnectionDroppedError, NoConnectionError,
               OperationCancelled, OperationTimeout)
    for attempt in range(60 if retry else 1):
        try:
            client.send_message(msg)
            return
        except gave_up:
            if not retry or attempt == 59:
                raise
            time.sleep(1)  # the application's back-off before trying again


if __name__ == "__main__":
    sys.exit(main())
