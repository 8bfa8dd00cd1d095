"""Issue 14, done-when 3: through the running daemon, a process that is not the module gets 403
from the workload API (and one journal line), and a module key is in no file that other users
can read, nor in the module's environment or command line."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import tempfile
from pathlib import Path

from gateway.modules.keys import ModuleKeys
from gateway.storage.store import Store
from gateway.upstream.cloud_contract import agent_topic
from tests.support.clients import publish_retained
from tests.support.synced import synced_gateway
from tests.support.workload import UnixHTTPConnection, ask

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_only_the_module_signs_and_its_key_stays_in_gatewayd(cloud, gateways, tmp_path):
    sockdir = Path(tempfile.mkdtemp(dir="/tmp"))
    socket_path = sockdir / "workload.sock"
    doc = {"version": 1, "modules": {"m1": {"type": "process", "status": "running",
                                            "settings": {"command": SLEEPER}}}}
    publish_retained(cloud.port, agent_topic("", "edge-1", "desired"), json.dumps(doc).encode())
    gw = synced_gateway(cloud, gateways, {}, modules={"workload_socket": str(socket_path),
                                                      "runner": "process"},
                        until=lambda s: s["modules"]["modules"].get("m1", {}).get(
                            "runtimeStatus") == "running")
    with UnixHTTPConnection(socket_path) as conn:  # this test's own process: not m1's
        status, body = ask(conn, "POST", "/modules/m1/genid/any/sign?api-version=2019-01-30",
                           {"keyId": "primary", "algo": "HMACSHA256",
                            "data": base64.b64encode(b"x").decode()})
        assert status == 403, body
    line = gw.wait_log(f"pid {os.getpid()} (uid {os.getuid()}) asked to sign for module 'm1'")
    assert "refused (403)" in line
    assert gw.status()["modules"]["workload"]["refused"] == 1
    assert "1 refused" in gw.ctl("status").stdout

    log = gw.log_text()
    pid = int(log.split("module m1: started (pid ")[1].split(",")[0].split(")")[0])
    module_env = Path(f"/proc/{pid}/environ").read_bytes()
    module_cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert gw.terminate() == 0
    # the store is gatewayd's own (checked before this test reopens it, which writes files):
    # no file or folder of it is open to other users
    assert not os.stat(gw.store).st_mode & (stat.S_IROTH | stat.S_IXOTH)
    for path in gw.store.rglob("*"):
        assert not path.stat().st_mode & stat.S_IROTH, path
    store = Store(gw.store)
    keys = ModuleKeys(store, "edge-1")
    secret = store.meta.get(b"module_secret")
    store.close()
    key = keys.key("m1")
    needles = [key, base64.b64encode(key), secret, base64.b64encode(secret)]
    assert not any(n in module_env or n in module_cmdline for n in needles)
    for root in (tmp_path, sockdir):  # nothing but the store holds the secret or a key
        for path in Path(root).rglob("*"):
            if path.is_file() and gw.store not in path.parents:
                assert not any(n in path.read_bytes() for n in needles), path
