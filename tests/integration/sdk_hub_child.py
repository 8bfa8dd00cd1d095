"""Run by the Azure IoT device SDK's own interpreter: twins, direct methods and C2D messages.

argv: connection string, CA file, and optionally "websockets" (MQTT over WebSocket on 443).
Prints one JSON line per event on stdout; exits on "quit"
from stdin. The handlers are the SDK's documented ones, used as a device application would.
"""

import json
import sys

from azure.iot.device import IoTHubDeviceClient, MethodResponse


def say(**event) -> None:
    print(json.dumps(event), flush=True)


def main() -> int:
    conn_str, ca_file = sys.argv[1], sys.argv[2]
    websockets = sys.argv[3:] == ["websockets"]
    with open(ca_file) as f:
        ca = f.read()
    client = IoTHubDeviceClient.create_from_connection_string(
        conn_str, server_verification_cert=ca, connection_retry=False, websockets=websockets
    )

    def on_method(request) -> None:
        body = {"method": request.name, "echo": request.payload}
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, body))

    client.on_method_request_received = on_method
    client.on_twin_desired_properties_patch_received = lambda patch: say(event="desired",
                                                                         patch=patch)
    client.on_message_received = lambda m: say(event="c2d", data=m.data.decode(),
                                               props=m.custom_properties)
    client.connect()
    client.patch_twin_reported_properties({"sdk": True, "fw": "2.14"})
    say(event="twin", twin=client.get_twin())
    say(event="ready")
    for line in sys.stdin:
        if line.strip() == "quit":
            break
    client.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
