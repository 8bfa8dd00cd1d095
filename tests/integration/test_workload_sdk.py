"""Unmodified azure-iot-device module code gets its trust bundle and its SAS token signatures from
gatewayd's workload API, and the module key never leaves the test (gatewayd's side); another
process, with the very same IOTEDGE_* environment, is refused and the journal says so."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, quote

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.child import certs
from gateway.log import LOGGER, Event
from gateway.modules import peer
from tests.support.gatewayd import HUB
from tests.support.workload import serving

SDK_PYTHON = os.environ.get("GATEWAYD_SDK_PYTHON", "")
CHILD = Path(__file__).with_name("sdk_workload_child.py")
KEY = os.urandom(32)
PEM = certs.make_ca("workload test CA")[1].public_bytes(Encoding.PEM).decode()
pytestmark = pytest.mark.skipif(not SDK_PYTHON, reason="GATEWAYD_SDK_PYTHON unset: run ./dev.sh "
                                "test, or point it at a python with azure-iot-device 2.14")


class Modules:
    """gatewayd's side: the key of module `filter` (generation gen-7) and its main pid."""

    def __init__(self) -> None:
        self.main_pids: dict[str, int] = {}

    def sign(self, module_id: str, generation_id: str, data: bytes) -> bytes | None:
        if (module_id, generation_id) != ("filter", "gen-7"):
            return None
        return hmac.new(KEY, data, hashlib.sha256).digest()

    def owner_of(self, pid: int) -> str | None:
        return peer.owner_in_process_mode(pid, self.main_pids)


@pytest.fixture
def journal():
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, level = Catch(), LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    yield records
    LOGGER.removeHandler(handler)
    LOGGER.setLevel(level)


@pytest.fixture
def workload():
    modules = Modules()
    with tempfile.TemporaryDirectory(prefix="gw-wl-") as d, \
            serving(Path(d) / "workload.sock", trust_bundle=lambda: PEM, sign=modules.sign,
                    owner_of=modules.owner_of) as api:
        yield api, modules


def _edge_env(socket_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTEDGE_")}
    env.update(IOTEDGE_IOTHUBHOSTNAME=HUB, IOTEDGE_DEVICEID="edge-1", IOTEDGE_MODULEID="filter",
               IOTEDGE_GATEWAYHOSTNAME="edge-1.local", IOTEDGE_MODULEGENERATIONID="gen-7",
               IOTEDGE_WORKLOADURI=f"unix://{socket_path}", IOTEDGE_APIVERSION="2019-01-30")
    return env


def _run_sdk(socket_path: Path, modules: Modules, *, as_module: bool, data: str) -> dict:
    """The SDK child; registered as module filter's main process first when `as_module`."""
    proc = subprocess.Popen([SDK_PYTHON, str(CHILD), data], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_edge_env(socket_path))
    if as_module:
        modules.main_pids["filter"] = proc.pid
    try:
        stdout, stderr = proc.communicate("go\n", timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["pid"] == proc.pid
    return out


def _digest(data: str) -> str:
    return base64.b64encode(hmac.new(KEY, data.encode(), hashlib.sha256).digest()).decode()


def test_create_from_edge_environment_gets_the_bundle_and_a_token_signed_with_the_key(workload):
    api, modules = workload
    out = _run_sdk(api.path, modules, as_module=True, data="hello from the module")
    assert "error" not in out, out.get("error")
    assert out["certificate"] == PEM and out["hsm_certificate"] == PEM
    assert out["signed"] == _digest("hello from the module")

    scheme, _, fields = out["token"].partition(" ")
    assert scheme == "SharedAccessSignature"
    token = {k: v[0] for k, v in parse_qs(fields).items()}
    assert token["sr"] == f"{HUB}/devices/edge-1/modules/filter"
    resource = quote(token["sr"], safe="")
    assert token["sig"] == _digest(f"{resource}\n{token['se']}")  # what the hub will check
    assert api.stats.signed == 2 and api.stats.refused == 0


def test_another_process_with_the_module_environment_is_refused_and_journalled(workload, journal):
    api, modules = workload
    # the module runs (a sibling of the SDK child, not its ancestor): the child is not it
    module = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)
    modules.main_pids["filter"] = module.pid
    try:
        out = _run_sdk(api.path, modules, as_module=False, data="x")
    finally:
        module.stdin.close()
        module.wait(10)
    assert "token" not in out and "signed" not in out
    assert "Unable to sign data" in out["error"] and "403" in out["error"]
    lines = [r.getMessage() for r in journal
             if getattr(r, "gw_event", None) is Event.WORKLOAD_REFUSED]
    assert len(lines) == 1
    assert f"pid {out['pid']} (uid {os.getuid()})" in lines[0] and "'filter'" in lines[0]
    assert api.stats.refused == 1 and api.stats.signed == 0
