"""The workload API on a real unix socket, asked with real HTTP: every answer the SDK may get,
the caps, keep-alive, and the 403 a process that is not the module gets, with its journal line."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.log import LOGGER, Event
from gateway.modules import workload
from tests.support.wait import wait_until
from tests.support.workload import UnixHTTPConnection, ask, serving

KEY = os.urandom(32)
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
V = "api-version=2019-01-30"
SIGN = f"/modules/filter/genid/gen-1/sign?{V}"


def _request(signed: bytes = b"sr\n1700000000", **over: object) -> dict:
    body = {"keyId": "primary", "algo": "HMACSHA256", "data": base64.b64encode(signed).decode()}
    body.update(over)
    return body


class Gateway:
    """The callbacks gatewayd would give: one module, `filter`, whose process is this test."""

    def __init__(self) -> None:
        self.owners: dict[int, str] = {os.getpid(): "filter"}
        self.asked: list[int] = []
        self.fail = False

    def trust_bundle(self) -> str:
        return PEM

    def sign(self, module_id: str, generation_id: str, data: bytes) -> bytes | None:
        if self.fail:
            raise RuntimeError("a bug in the key store")
        if (module_id, generation_id) != ("filter", "gen-1"):
            return None
        return hmac.new(KEY, data, hashlib.sha256).digest()

    def owner_of(self, pid: int) -> str | None:
        self.asked.append(pid)
        return self.owners.get(pid)


@pytest.fixture
def journal():
    """The daemon logger's records, whatever handlers it has (caplog misses them after setup)."""
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
def sock_dir():
    """A short directory: a unix socket path must fit in 108 bytes, pytest's tmp_path may not."""
    with tempfile.TemporaryDirectory(prefix="gw-wl-") as d:
        yield Path(d)


@pytest.fixture
def gw():
    return Gateway()


@pytest.fixture
def api(sock_dir, gw):
    with serving(sock_dir / "workload.sock", trust_bundle=gw.trust_bundle, sign=gw.sign,
                 owner_of=gw.owner_of) as running:
        yield running


@pytest.fixture
def conn(api):
    c = UnixHTTPConnection(api.path)
    yield c
    c.close()


def _refusals(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records
            if getattr(r, "gw_event", None) is Event.WORKLOAD_REFUSED]


def _raw(path: Path, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes. The server may stop reading (and close)
    before all of them are sent: that is the point of a cap, not a failure."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


# -- 200 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["2018-06-28", "2019-01-30", "2019-11-05", "2020-07-07",
                                     "2021-12-07", "2022-08-03"])
def test_anyone_may_read_the_trust_bundle_at_every_api_version(conn, version):
    assert ask(conn, "GET", f"/trust-bundle?api-version={version}") == (200, {"certificate": PEM})


def test_the_module_gets_the_hmac_of_its_data_with_its_key(conn, api, gw):
    status, answer = ask(conn, "POST", SIGN, _request(b"host%2Fdevices%2Fgw\n1700000000"))
    assert status == 200
    expected = hmac.new(KEY, b"host%2Fdevices%2Fgw\n1700000000", hashlib.sha256).digest()
    assert base64.b64decode(answer["digest"]) == expected
    assert gw.asked == [os.getpid()]  # SO_PEERCRED named this process
    assert api.stats.signed == 1 and api.stats.requests == 1 and api.stats.refused == 0


def test_a_percent_encoded_module_id_is_decoded(conn, gw):
    gw.owners[os.getpid()] = "filter"
    status, _ = ask(conn, "POST", f"/modules/%66ilter/genid/gen-1/sign?{V}", _request())
    assert status == 200


def test_two_requests_share_one_connection(conn, api):
    assert ask(conn, "GET", f"/trust-bundle?{V}")[0] == 200
    first = conn.sock
    assert ask(conn, "POST", SIGN, _request())[0] == 200
    assert conn.sock is first  # http.client reconnects when the server closed: it did not
    assert api.stats.requests == 2


def test_pipelined_requests_are_answered_in_order_on_one_connection(api):
    get = f"GET /trust-bundle?{V} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    body = json.dumps(_request()).encode()
    post = (f"POST {SIGN} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body
    out = _raw(api.path, get + post)
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert out.index(b'"certificate"') < out.index(b'"digest"')


# -- 400 --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "says"), [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (_request(keyId="secondary"), "keyId"),
    (_request(algo="HMACSHA1"), "algo"),
    (_request(data="%%%not base64"), "base64"),
    (_request(data=12), "base64 string"),
    ({"keyId": "primary", "algo": "HMACSHA256"}, "base64 string"),
])
def test_a_bad_sign_body_gets_400_with_the_reason(conn, api, body, says):
    status, answer = ask(conn, "POST", SIGN, body)
    assert status == 400
    assert says in answer["message"]
    assert api.stats.signed == 0 and api.stats.errors == 1


@pytest.mark.parametrize("query", ["", "?api-version=2017-11-01", "?api-version=latest",
                                   "?api-version=2019-13-01", "?api-version=2019-02-30",
                                   "?api-version=2019-01-30&api-version=2020-07-07"])
def test_a_missing_or_unknown_api_version_gets_400(conn, query):
    status, answer = ask(conn, "GET", f"/trust-bundle{query}")
    assert status == 400
    assert "api-version" in answer["message"]


# -- 403 --------------------------------------------------------------------------------------

def test_a_module_may_not_sign_for_another_and_one_line_says_so(conn, api, gw, journal):
    for _ in range(3):  # a retry loop: three 403s, one journal line
        status, answer = ask(conn, "POST", "/modules/poller/genid/gen-1/sign?" + V, _request())
        assert status == 403
        assert "poller" in answer["message"]
    lines = _refusals(journal)
    assert len(lines) == 1
    assert f"pid {os.getpid()} (uid {os.getuid()})" in lines[0]
    assert "'poller'" in lines[0] and "module 'filter'" in lines[0]
    assert api.stats.refused == 3 and api.stats.signed == 0


def test_another_process_gets_403_for_the_module_and_the_journal_names_it(api, journal):
    script = (
        "import http.client, json, os, socket, sys\n"
        "class C(http.client.HTTPConnection):\n"
        "    def connect(self):\n"
        "        self.sock = socket.socket(socket.AF_UNIX)\n"
        "        self.sock.connect(sys.argv[1])\n"
        "c = C('localhost', timeout=10)\n"
        "body = json.dumps({'keyId': 'primary', 'algo': 'HMACSHA256', 'data': 'aGk='})\n"
        "c.request('POST', sys.argv[2], body=body)\n"
        "r = c.getresponse()\n"
        "print(json.dumps({'pid': os.getpid(), 'status': r.status,"
        " 'answer': json.loads(r.read())}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(api.path), SIGN],
                          capture_output=True, text=True, timeout=30, check=True)
    out = json.loads(done.stdout)
    assert out["status"] == 403
    assert "digest" not in out["answer"] and "filter" in out["answer"]["message"]
    lines = _refusals(journal)
    assert len(lines) == 1
    assert f"pid {out['pid']} " in lines[0] and "'filter'" in lines[0]
    assert "no module's process" in lines[0] and "from the deployment" in lines[0]


# -- 404, 405 ---------------------------------------------------------------------------------

def test_an_unknown_generation_or_module_gets_404(conn, gw):
    status, answer = ask(conn, "POST", f"/modules/filter/genid/gen-0/sign?{V}", _request())
    assert status == 404 and "gen-0" in answer["message"]
    gw.owners[os.getpid()] = "ghost"
    status, answer = ask(conn, "POST", f"/modules/ghost/genid/gen-1/sign?{V}", _request())
    assert status == 404 and "ghost" in answer["message"]


@pytest.mark.parametrize("target", [f"/?{V}", f"/modules/filter/genid/gen-1/encrypt?{V}",
                                    f"/modules/filter/certificate/server?{V}",
                                    f"/modules//genid/gen-1/sign?{V}", f"/trust-bundle/?{V}"])
def test_an_unknown_endpoint_gets_404_naming_what_is_served(conn, target):
    status, answer = ask(conn, "POST", target, _request())
    assert status == 404
    assert "/trust-bundle" in answer["message"]


@pytest.mark.parametrize(("method", "target", "allow"), [
    ("GET", SIGN, "POST"), ("POST", f"/trust-bundle?{V}", "GET"),
    ("DELETE", f"/trust-bundle?{V}", "GET"),
])
def test_the_wrong_method_gets_405_with_allow(conn, method, target, allow):
    conn.request(method, target, body=b"{}")
    response = conn.getresponse()
    assert response.status == 405
    assert response.getheader("Allow") == allow
    assert method in json.loads(response.read())["message"]


# -- limits -----------------------------------------------------------------------------------

def test_an_oversized_head_gets_431_before_it_ends_and_the_connection_closes(api):
    # h11 measures its buffer after each read, so the cap holds to within one read's size
    out = _raw(api.path, b"GET /trust-bundle?" + V.encode() + b" HTTP/1.1\r\nHost: x\r\n"
               + b"X-Big: " + b"a" * (workload.HEAD_MAX + workload.READ_CHUNK))  # no end
    assert out.startswith(b"HTTP/1.1 431 ")
    assert api.stats.errors == 1


def test_an_oversized_body_is_refused_from_its_length_without_reading_it(api):
    out = _raw(api.path, f"POST {SIGN} HTTP/1.1\r\nHost: x\r\n"
               f"Content-Length: {workload.BODY_MAX + 1}\r\n\r\n".encode() + b"{")
    assert out.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in out.lower()


def test_an_oversized_chunked_body_is_refused_as_it_arrives(api):
    chunk = b"a" * 8192
    chunks = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n"
                      for _ in range(workload.BODY_MAX // len(chunk) + 1))
    out = _raw(api.path, f"POST {SIGN} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               .encode() + chunks + b"0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413 ")


def test_garbage_gets_400_and_a_close(api):
    out = _raw(api.path, b"\x16\x03\x01 this is TLS, not HTTP\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")


def test_a_silent_connection_is_closed(monkeypatch, api):
    monkeypatch.setattr(workload, "IDLE_TIMEOUT", 0.2)
    assert _raw(api.path, b"") == b""  # the server hung up: recv returned end of file


def test_connections_over_the_cap_get_503(monkeypatch, api):
    monkeypatch.setattr(workload, "CONNECTIONS_MAX", 2)
    held = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    try:
        for s in held:
            s.connect(str(api.path))
        wait_until(lambda: api.stats.connections, lambda n: n == 2, timeout=10,
                   what="two connections open")
        assert _raw(api.path, b"").startswith(b"HTTP/1.1 503 ")
    finally:
        for s in held:
            s.close()
    wait_until(lambda: api.stats.connections, lambda n: n == 0, timeout=10,
               what="the held connections closed")
    with UnixHTTPConnection(api.path) as c:
        assert ask(c, "GET", f"/trust-bundle?{V}")[0] == 200  # the cap frees as they close


def test_a_callback_that_fails_gets_500_and_the_next_request_is_answered(conn, gw, journal):
    gw.fail = True
    status, answer = ask(conn, "POST", SIGN, _request())
    assert status == 500 and "journal" in answer["message"]
    assert any("a bug in the key store" in str(r.exc_info) for r in journal)
    gw.fail = False
    assert ask(conn, "POST", SIGN, _request())[0] == 200


# -- the socket file --------------------------------------------------------------------------

def test_any_local_user_may_connect_and_a_stale_socket_is_replaced(sock_dir, gw):
    path = sock_dir / "workload.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file with nobody behind it, as a SIGKILL leaves
    with serving(path, trust_bundle=gw.trust_bundle, sign=gw.sign, owner_of=gw.owner_of):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666
        with UnixHTTPConnection(path) as c:
            assert ask(c, "GET", f"/trust-bundle?{V}")[0] == 200
    assert not path.exists()  # close() removes it


def test_a_file_that_is_not_a_socket_is_not_removed(sock_dir, gw):
    path = sock_dir / "workload.sock"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"), \
            serving(path, trust_bundle=gw.trust_bundle, sign=gw.sign, owner_of=gw.owner_of):
        pass
    assert path.read_text() == "precious"
