"""What a running gatewayd has imported: each head's libraries only when that head is configured.

Idle memory on a small Pi is mostly imports (docs/performance.md, issue 18), so a gateway
without the 443 and 5671 heads must not pay for wsproto or Qpid Proton, and none pays for
psutil, importlib.metadata (email, zipfile, csv), cryptography, shutil and tempfile (zlib,
bz2, lzma, random), random itself (the reconnect jitter is os.urandom), argparse or secrets,
nor ctypes when glibc's tunables come from the environment, as the unit and the harness give
them; h11 waits for the workload socket's first request.
The daemon is started with PYTHONPROFILEIMPORTTIME, which makes the interpreter itself list
every module it imports.
"""

from __future__ import annotations

from tests.support.broker import free_port
from tests.support.pki import server_tls
from tests.support.synced import synced_gateway

NEVER = {"psutil", "importlib.metadata", "email", "zipfile", "cryptography",
         "shutil", "tempfile", "bz2", "lzma", "argparse", "secrets", "random", "ctypes"}
WORKLOAD_HTTP = {"h11", "http"}  # the workload socket's HTTP, at its first connection
WEB_HEAD = {"wsproto", "gateway.child.web_head", "gateway.child.websocket"}
AMQP_HEAD = {"proton", "gateway.child.amqp"}


def _imported(gw) -> set[str]:
    """Every module the daemon imported, from the interpreter's own import-time lines."""
    lines = [line for line in gw.log_text().splitlines() if line.startswith("import time:")]
    assert len(lines) > 100, "PYTHONPROFILEIMPORTTIME listed no imports"
    return {line.rsplit("|", 1)[1].strip() for line in lines}


def _run(cloud, gateways, **overrides) -> set[str]:
    gw = synced_gateway(cloud, gateways, {"c1": "a2V5"}, online=True,
                        env={"PYTHONPROFILEIMPORTTIME": "1"}, **overrides)
    gw.close()
    return _imported(gw)


def test_a_gateway_without_the_443_and_5671_heads_never_imports_them(cloud, gateways):
    imported = _run(cloud, gateways)
    assert "gateway.child.server" in imported and "rocksdict" in imported
    unwanted = NEVER | WEB_HEAD | AMQP_HEAD | WORKLOAD_HTTP
    assert not imported & unwanted, imported & unwanted


def test_each_configured_head_imports_its_own(cloud, gateways, tmp_path):
    _, cert, key = server_tls(tmp_path)
    imported = _run(cloud, gateways, tls=(cert, key), listen={"https_port": free_port(),
                                                                   "amqp_port": free_port()})
    assert imported >= WEB_HEAD | AMQP_HEAD, (WEB_HEAD | AMQP_HEAD) - imported
    assert not imported & NEVER, imported & NEVER
