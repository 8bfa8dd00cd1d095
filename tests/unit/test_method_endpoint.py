"""Direct methods over HTTPS on the 443 head, through a real ChildServer (its loop in a thread),
a real MethodRouter and MethodEndpoint, real TLS and a raw MQTT child that answers calls.

What must hold: a module with its own valid SAS token calls a child or a module and gets
`{"status", "payload"}` with the target's own status (even 404) under HTTP 200; a missing or
wrong token or caller header is 401, an unknown target 404, a target that is not connected 404,
one that goes away mid-call 504, a bad body 400; each refusal has one journal line, and a call
that is served has none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time

import pytest

from gateway.child import auth, dialect, server
from gateway.child.auth import SAS, Audience, Child, Registry, make_sas_token
from gateway.config import ListenSettings
from gateway.hub.method_endpoint import MethodEndpoint
from gateway.hub.methods import MethodRouter
from gateway.log import Event
from gateway.mqtt import codec
from gateway.mqtt.codec import ConnAck, Publish, SubAck, Subscribe
from tests.faults.hostile import connect_packet, read_packets
from tests.support.broker import free_port
from tests.support.pki import server_tls

HUB = "hub.example.net"
GW = "edge-1"
CALLER = f"{GW}/caller"
CALLEE = f"{GW}/callee"
KEY = base64.b64encode(os.urandom(32)).decode()
OTHER_KEY = base64.b64encode(os.urandom(32)).decode()


def _identities() -> dict[str, Child]:
    def sas(who: str, enabled: bool = True) -> Child:
        return Child(who, enabled, SAS, (base64.b64decode(KEY),), ())
    return {"child-1": sas("child-1"), "child-2": sas("child-2"), "off": sas("off", False),
            CALLER: sas(CALLER), CALLEE: sas(CALLEE)}


class Handler(server.Handler):
    """Accepts every CONNECT; a method answer goes to the router, an HTTPS request to the
    endpoint; nothing else."""

    router: MethodRouter
    endpoint: MethodEndpoint

    def authenticate(self, connect, cert_der):
        return server.Verdict(True, 0, "")

    def on_subscribe(self, conn, topic_filter, qos):
        return 0

    def on_publish(self, conn, publish):
        op = dialect.classify_publish(conn.device_id, publish.topic)
        if isinstance(op, dialect.MethodResponse):
            self.router.answer(conn.device_id, op.rid, op.status, publish.payload)
        if publish.qos == 1:
            conn.hold_puback(publish.packet_id)()

    def on_closed(self, conn):
        self.router.device_gone(conn.device_id)

    async def on_https_request(self, request):
        return await self.endpoint.serve(request)


class Site:
    def __init__(self, tmp_path) -> None:
        self.ca, cert, key = server_tls(tmp_path)
        settings = ListenSettings("127.0.0.1", 0, cert, key, None, free_port(), 4096, 16, 2.0,
                                  https_port=free_port())
        self.handler = Handler()
        self.srv = server.ChildServer(settings, self.handler)
        identities = _identities()
        audience = Audience(HUB, GW, (), {k: v for k, v in identities.items() if "/" in k})
        self.handler.router = MethodRouter(self.srv)
        self.handler.endpoint = MethodEndpoint(
            self.handler.router, GW, lambda: identities,
            lambda who, token: auth.authenticate_token(Registry.empty(), audience, who, token,
                                                       time.time()))
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(cert), str(key))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        bound = asyncio.run_coroutine_threadsafe(self.srv.start(tls), self.loop).result(10)
        (_, self.plain_port), (_, self.https_port) = bound

    def call(self, path: str, body: object, caller: str | None = CALLER,
             token: str | None = None, method: str = "POST") -> tuple[int, object]:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        conn = http.client.HTTPSConnection("127.0.0.1", self.https_port, context=ctx, timeout=20)
        headers = {"Content-Type": "application/json"}
        if caller is not None:
            headers["x-ms-edge-moduleId"] = caller
        if token is None and caller is not None:
            token = make_sas_token(HUB, caller, KEY, int(time.time()) + 600)
        if token:
            headers["Authorization"] = token
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        conn.close()
        return response.status, json.loads(answer)

    def close(self) -> None:
        async def stop() -> None:
            await self.srv.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Target:
    """A raw MQTT client subscribed to methods; answers each call with `status` and an echo,
    or (`answer=False`) closes its socket when the call arrives."""

    def __init__(self, site: Site, who: str, status: int = 200, answer: bool = True) -> None:
        self.who = who
        self.calls: list[tuple[str, object]] = []
        self.sock = socket.create_connection(("127.0.0.1", site.plain_port), timeout=10)
        self.sock.sendall(connect_packet(who, KEY))
        assert isinstance(read_packets(self.sock, 1)[0], ConnAck)
        self.sock.sendall(codec.encode(Subscribe(1, (("$iothub/methods/POST/#", 0),))))
        assert isinstance(read_packets(self.sock, 1)[0], SubAck)
        self._status, self._answer = status, answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        decoder = codec.Decoder()
        while chunk := self._recv():
            for packet in decoder.feed(chunk):
                if isinstance(packet, Publish):
                    self._on_call(packet)

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def _on_call(self, packet: Publish) -> None:
        method = packet.topic.split("/")[3]
        rid = packet.topic.split("$rid=")[1]
        payload = json.loads(packet.payload)
        self.calls.append((method, payload))
        if not self._answer:
            self.sock.shutdown(socket.SHUT_RDWR)
            return
        body = json.dumps({"echo": payload, "by": self.who}).encode()
        self.sock.sendall(codec.encode(Publish(f"$iothub/methods/res/{self._status}/?$rid={rid}",
                                               body)))

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a blocked recv() wakes up on shutdown, not close
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def site(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="gatewayd")
    s = Site(tmp_path)
    yield s
    s.close()


def _refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if getattr(r, "gw_event", None) is Event.HTTPS_REFUSED]


CALL = {"methodName": "reboot", "payload": {"delay": 3}, "responseTimeoutInSeconds": 30,
        "connectTimeoutInSeconds": 0}


def test_a_module_calls_a_child_and_gets_its_answer(site, caplog):
    child = Target(site, "child-1", status=201)
    try:
        status, body = site.call("/twins/child-1/methods?api-version=2019-10-01", CALL)
    finally:
        child.close()
    assert status == 200
    assert body == {"status": 201, "payload": {"echo": {"delay": 3}, "by": "child-1"}}
    assert child.calls == [("reboot", {"delay": 3})]
    assert _refusals(caplog) == [] and site.srv.https_served == 1


def test_a_module_calls_another_module(site):
    callee = Target(site, CALLEE)
    try:
        status, body = site.call(f"/twins/{GW}/modules/callee/methods?api-version=2019-10-01",
                                 {"methodName": "ping", "payload": None})
    finally:
        callee.close()
    assert (status, body) == (200, {"status": 200, "payload": {"echo": None, "by": CALLEE}})


def test_the_targets_own_404_is_its_answer_not_the_gateways(site):
    child = Target(site, "child-1", status=404)
    try:
        status, body = site.call("/twins/child-1/methods?api-version=2019-10-01", CALL)
    finally:
        child.close()
    assert status == 200 and body["status"] == 404


@pytest.mark.parametrize(("caller", "token", "says"), [
    (CALLER, make_sas_token(HUB, CALLER, OTHER_KEY, int(time.time()) + 600), "does not match"),
    (CALLER, make_sas_token(HUB, CALLER, KEY, int(time.time()) - 10), "expired"),
    (CALLER, make_sas_token(HUB, CALLEE, KEY, int(time.time()) + 600), "is for resource"),
    (CALLER, "", "no Authorization header"),
    (CALLER, "Bearer abc", "not a SAS token"),
    (None, "", "header must name the calling module"),
    ("child-1", make_sas_token(HUB, "child-1", KEY, int(time.time()) + 600),
     "header must name the calling module"),
    ("edge-2/caller", make_sas_token(HUB, "edge-2/caller", KEY, int(time.time()) + 600),
     "not a module of this gateway"),
    (f"{GW}/ghost", make_sas_token(HUB, f"{GW}/ghost", KEY, int(time.time()) + 600),
     "unknown module"),
], ids=["wrong-key", "expired", "other-module's-token", "no-token", "not-sas", "no-caller",
        "child-caller", "other-gateway", "unknown-module"])
def test_a_bad_caller_gets_401_and_one_journal_line(site, caplog, caller, token, says):
    child = Target(site, "child-1")
    try:
        status, body = site.call("/twins/child-1/methods?api-version=2019-10-01", CALL,
                                 caller=caller, token=token)
    finally:
        child.close()
    assert status == 401 and says in body["message"], body
    assert child.calls == []  # nothing reached the target
    lines = _refusals(caplog)
    assert len(lines) == 1 and "(401)" in lines[0] and says in lines[0]
    assert not token or token not in lines[0]  # a token never reaches the journal


def test_an_unknown_or_disabled_target_is_404_with_a_line(site, caplog):
    for path in ("/twins/nobody/methods", "/twins/off/methods",
                 f"/twins/{GW}/modules/ghost/methods", "/twins/edge-2/modules/callee/methods"):
        status, body = site.call(path + "?api-version=2019-10-01", CALL)
        assert status == 404 and "neither a child nor a module" in body["message"], path
    assert len(_refusals(caplog)) == 1  # rate-limited: one line per caller, status and minute


def test_a_target_not_connected_is_404_and_one_that_leaves_is_504(site, caplog):
    status, body = site.call("/twins/child-2/methods?api-version=2019-10-01", CALL)
    assert status == 404 and "not connected" in body["message"]
    child = Target(site, "child-1", answer=False)  # takes the call, then drops its socket
    status, body = site.call("/twins/child-1/methods?api-version=2019-10-01", CALL)
    child.close()
    assert status == 504 and "did not answer" in body["message"]
    assert child.calls == [("reboot", {"delay": 3})]
    assert _refusals(caplog) == []  # the call was not refused: the target could not answer


@pytest.mark.parametrize(("path", "body", "status", "says"), [
    ("/twins/child-1/methods", CALL, 400, "api-version"),
    ("/twins/child-1/methods?api-version=1&api-version=2", CALL, 400, "api-version"),
    ("/twins/child-1/methods?api-version=1", b"{not json", 400, "not JSON"),
    ("/twins/child-1/methods?api-version=1", [1], 400, "JSON object"),
    ("/twins/child-1/methods?api-version=1", {"payload": 1}, 400, "methodName"),
    ("/twins/child-1/methods?api-version=1", {"methodName": "a/b"}, 400, "methodName"),
    ("/twins/child-1/methods?api-version=1", {"methodName": "m", "responseTimeoutInSeconds": 1},
     400, "responseTimeoutInSeconds"),
    ("/twins/child-1/methods?api-version=1", {"methodName": "m", "connectTimeoutInSeconds": "x"},
     400, "connectTimeoutInSeconds"),
    ("/twins/child-1/twin?api-version=1", CALL, 404, "not found"),
    ("/", CALL, 404, "not found"),
], ids=["no-api-version", "two-api-versions", "not-json", "not-object", "no-method",
        "slash-method", "short-timeout", "bad-connect-timeout", "other-path", "root"])
def test_a_bad_request_is_refused_with_its_status(site, caplog, path, body, status, says):
    got, answer = site.call(path, body)
    assert got == status and says in answer["message"], answer
    assert len(_refusals(caplog)) == 1


def test_only_post_is_served(site):
    got, answer = site.call("/twins/child-1/methods?api-version=1", b"", method="GET")
    assert got == 405 and "POST" in answer["message"]
