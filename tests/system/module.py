"""A test module inside the VM: the guest's python3 and its standard library only.

Run by the deployment (as the unit gatewayd-module@ticker.service), it has its SAS token data
signed once over the workload API named by IOTEDGE_WORKLOADURI, prints `sign STATUS`, then
`tick` every second for the journal. `module.py sign` signs once, prints the status and exits:
run by hand (not from the module's unit) it must get 403.
"""

import base64
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.socket_path)


def sign() -> int:
    uri = os.environ["IOTEDGE_WORKLOADURI"]
    module = urllib.parse.quote(os.environ["IOTEDGE_MODULEID"], safe="")
    genid = urllib.parse.quote(os.environ["IOTEDGE_MODULEGENERATIONID"], safe="")
    body = json.dumps({"keyId": "primary", "algo": "HMACSHA256",
                       "data": base64.b64encode(b"hub/devices/x\n123").decode()})
    conn = UnixConnection(uri.removeprefix("unix://"))
    conn.request("POST", f"/modules/{module}/genid/{genid}/sign?api-version=2019-01-30", body)
    status = conn.getresponse().status
    conn.close()
    return status


def main() -> None:
    try:
        status = sign()
    except OSError as exc:
        status = f"error {exc}"
    print(f"sign {status}", flush=True)
    if sys.argv[1:] == ["sign"]:
        return
    while True:
        print("tick", flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()
