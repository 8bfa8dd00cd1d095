"""An IoT Edge module written as IoT Edge modules are: azure-iot-device's
`IoTHubModuleClient.create_from_edge_environment()`, nothing that knows gatewayd.

    sdk_module.py producer STATE_DIR COUNT   sends {"device": "producer", "i": n} to output out1
    sdk_module.py consumer STATE_DIR         receives on input in1 in order, reports, answers
    sdk_module.py invoker STATE_DIR TARGET…   calls method "reboot" on each TARGET (a device id,
                                             or device/module) with invoke_method (HTTPS)

What it did is written to files in STATE_DIR, each line synced, so that the test can tell what
the SDK had acknowledged before a kill: `acked` (producer: i after send returned),
`received` (consumer: i per input message), `reported` (consumer: the count after each reported
patch), `desired` (consumer: each desired patch as JSON), `results` (invoker: one JSON line per
call, the answer or the SDK's error). The consumer connects (and the invoker calls) only once
STATE_DIR/go exists, so that its messages wait in the gateway meanwhile.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from azure.iot.device import IoTHubModuleClient, Message, MethodResponse


def append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def producer(state: Path, count: int) -> None:
    acked = state / "acked"
    done = [int(x) for x in lines(acked)]
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    for i in range(done[-1] + 1 if done else 0, count):
        msg = Message(json.dumps({"device": "producer", "i": i}))
        msg.custom_properties["kind"] = "temp"
        client.send_message_to_output(msg, "out1")  # returns once the gateway's PUBACK came
        append(acked, str(i))
        time.sleep(0.02)  # a sensor's pace, so that a kill finds it in the middle
    threading.Event().wait()  # a module runs until it is stopped


def consumer(state: Path) -> None:
    while not (state / "go").exists():
        time.sleep(0.05)
    client = IoTHubModuleClient.create_from_edge_environment()
    received = []

    def patches() -> None:
        while True:
            patch = client.receive_twin_desired_properties_patch()
            append(state / "desired", json.dumps(patch, sort_keys=True))

    def methods() -> None:
        while True:
            request = client.receive_method_request()
            body = {"method": request.name, "echo": request.payload, "received": len(received)}
            client.send_method_response(
                MethodResponse.create_from_method_request(request, 200, body))

    # azure-iot-device 2.14 subscribes to the inputs before it makes the input's inbox, and
    # drops what arrives in between ("No input message inbox for in1"): a hub that delivers
    # waiting messages at once after the SUBACK, as any hub may, meets that race. Making the
    # inbox first is the one line here that knows the SDK's insides.
    client._inbox_manager.get_input_message_inbox("in1")
    client.connect()
    for loop in (patches, methods):
        threading.Thread(target=loop, daemon=True).start()
    append(state / "connected", "1")
    while True:  # the SDK runs handlers on four threads: receive loops keep the order
        message = client.receive_message_on_input("in1")
        body = json.loads(message.data)
        append(state / "received", f"{body['i']}")
        received.append(body["i"])
        client.patch_twin_reported_properties({"received": len(received), "last": body["i"]})
        append(state / "reported", str(len(received)))


def invoker(state: Path, targets: list[str]) -> None:
    """Direct methods from a module go over HTTPS to the gateway host's port 443 (the SDK's
    HTTP pipeline), not over the module's MQTT connection: no connect() is needed for them."""
    while not (state / "go").exists():
        time.sleep(0.05)
    client = IoTHubModuleClient.create_from_edge_environment()
    for target in targets:
        device, _, module = target.partition("/")
        params = {"methodName": "reboot", "payload": {"target": target},
                  "responseTimeoutInSeconds": 30, "connectTimeoutInSeconds": 0}
        try:
            answer = client.invoke_method(params, device, module or None)
            line = {"target": target, "answer": answer}
        except Exception as exc:  # a ClientError; the ServiceError it wraps has the status
            line = {"target": target, "error": f"{type(exc).__name__}: {exc}: "
                                               f"{exc.__cause__!r}"}
        append(state / "results", json.dumps(line, sort_keys=True))
    threading.Event().wait()


if __name__ == "__main__":
    role, state_dir = sys.argv[1], Path(sys.argv[2])
    state_dir.mkdir(parents=True, exist_ok=True)
    if role == "producer":
        producer(state_dir, int(sys.argv[3]))
    elif role == "invoker":
        invoker(state_dir, sys.argv[3:])
    else:
        consumer(state_dir)
