"""Run by the Azure IoT device SDK's own interpreter (it pins paho-mqtt < 2, so it has its venv).

argv: connection string, CA file, device id, count, and optionally "websockets" (MQTT over
WebSocket on 443, the SDK's `websockets=True`). Sends `count` messages with a custom property and
JSON content type, exactly as a device application would, then exits 0.
"""

import json
import sys

from azure.iot.device import IoTHubDeviceClient, Message


def main() -> int:
    conn_str, ca_file, device_id, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    websockets = sys.argv[5:] == ["websockets"]
    with open(ca_file) as f:
        ca = f.read()
    client = IoTHubDeviceClient.create_from_connection_string(
        conn_str, server_verification_cert=ca, connection_retry=False, websockets=websockets
    )
    client.connect()
    for i in range(count):
        msg = Message(json.dumps({"device": device_id, "i": i}))
        msg.content_type = "application/json"
        msg.content_encoding = "utf-8"
        msg.custom_properties["temperature"] = "21.5"
        msg.custom_properties["site name"] = "north/gate"
        client.send_message(msg)
    client.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
