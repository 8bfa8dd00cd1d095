"""The IoT Edge workload API on a unix socket: the trust bundle, and SAS signatures made here.

Module code written for IoT Edge (azure-iot-device's `create_from_edge_environment()`) never holds
its key: it asks the workload socket named by IOTEDGE_WORKLOADURI to sign its SAS token, and for
the CA to trust. gatewayd answers the two requests that SDK makes, as the IoT Edge daemon does:

    GET  /trust-bundle?api-version=V                   -> 200 {"certificate": PEM}
    POST /modules/{id}/genid/{gid}/sign?api-version=V  -> 200 {"digest": base64}
         body {"keyId": "primary", "algo": "HMACSHA256", "data": base64}  (no Content-Type sent)

Errors answer {"message": ...}. The socket is open to every local user (mode 0666) because the
kernel, not the file mode, says who is asking: SO_PEERCRED names the caller's pid, and only module
m's own processes (`owner_of(pid) == m`) may have data signed with m's key. Anyone may read the
trust bundle: it is public. A refused signature is one journal line per caller, module and minute.

HTTP/1.1 is h11's (sans-I/O); this module is the loop around it: the head and the body are capped
before they are parsed further, a connection that says nothing for IDLE_TIMEOUT is closed, and at
most CONNECTIONS_MAX are open at once. The callbacks run in a worker thread (they read /proc and
maybe the store), so the event loop waits on neither. h11 (and http's status phrases) are
imported at the first connection, not at start-up: a gateway without modules never pays their
0.4 MiB of idle memory (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.errors import ConfigError, PeerError
from gateway.log import LOGGER, Event, event
from gateway.modules.peer import PeerCred, peer_credentials

if TYPE_CHECKING:
    import h11

HEAD_MAX = 64 * 1024  # request line and headers (to within one READ_CHUNK); the SDK's: ~300 B
BODY_MAX = 64 * 1024  # a sign request carries a SAS token's string to sign: well under 1 KiB
IDLE_TIMEOUT = 30.0  # seconds a connection may stay silent, between or inside requests
CONNECTIONS_MAX = 64  # open at once; more get 503 and are closed
READ_CHUNK = 16 * 1024
LOG_KEYS_MAX = 1024  # rate-limit memory: callers choose pids and module names, so it is bounded
LOG_INTERVAL = 60.0
API_VERSION_MIN = "2018-06-28"  # the first workload API version, as the IoT Edge daemon says
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SERVED = "GET /trust-bundle and POST /modules/{id}/genid/{gid}/sign"

T = TypeVar("T")


class WorkloadRefusal(PeerError):
    """A request the workload API answers with an error status; the message says why."""

    def __init__(self, status: int, message: str, allow: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.allow = allow


@dataclass(frozen=True)
class Target:
    """What a request asks for, from its method and path: the trust bundle, or a signature."""

    kind: str  # "trust-bundle" or "sign"
    module_id: str = ""
    generation_id: str = ""


@dataclass(frozen=True)
class WorkloadStats:
    """Counters for `gatewayctl status`: requests answered, signatures made, callers refused
    (403), other error answers, connections open now."""

    requests: int
    signed: int
    refused: int
    errors: int
    connections: int


def parse_target(method: bytes, target: bytes) -> Target:
    """The endpoint a request names, or a WorkloadRefusal (404, 405, 400 for the api-version)."""
    parts = urlsplit(target.decode("ascii", "replace"))
    segments = [unquote(s) for s in parts.path.split("/")]
    if segments == ["", "trust-bundle"]:
        found, allowed = Target("trust-bundle"), b"GET"
    elif len(segments) == 6 and segments[:2] == ["", "modules"] and segments[3] == "genid" \
            and segments[5] == "sign" and segments[2] and segments[4]:
        found, allowed = Target("sign", segments[2], segments[4]), b"POST"
    else:
        raise WorkloadRefusal(404, f"no such endpoint {parts.path!r}: gatewayd serves {SERVED}")
    if method != allowed:
        raise WorkloadRefusal(405, f"{parts.path} takes {allowed.decode()}, not "
                                   f"{method.decode('ascii', 'replace')}", allow=allowed.decode())
    check_api_version(parse_qs(parts.query).get("api-version", []))
    return found


def check_api_version(values: list[str]) -> None:
    """One api-version, in date form, no older than the first workload API: what IoT Edge takes."""
    if len(values) != 1:
        raise WorkloadRefusal(400, "give exactly one api-version query parameter, "
                                   f"e.g. ?api-version=2019-01-30 (got {len(values)})")
    version = values[0]
    if not _DATE.match(version) or not _valid_date(version) or version < API_VERSION_MIN:
        raise WorkloadRefusal(400, f"api-version {version!r} is not one of the workload API's: "
                                   f"a date from {API_VERSION_MIN} on, e.g. 2019-01-30")


def _valid_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def parse_sign_body(body: bytes) -> bytes:
    """The data to sign from a sign request's JSON body; anything else is a 400 saying why."""
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WorkloadRefusal(400, "the body is not JSON: send "
                                   '{"keyId": "primary", "algo": "HMACSHA256", "data": BASE64}'
                              ) from None
    if not isinstance(request, dict):
        raise WorkloadRefusal(400, "the body must be a JSON object with keyId, algo and data")
    if request.get("keyId") != "primary":
        raise WorkloadRefusal(400, f"keyId {request.get('keyId')!r} is not served: gatewayd "
                                   'keeps one key per module, "primary"')
    if request.get("algo") != "HMACSHA256":
        raise WorkloadRefusal(400, f"algo {request.get('algo')!r} is not served: only "
                                   '"HMACSHA256"')
    data = request.get("data")
    if not isinstance(data, str):
        raise WorkloadRefusal(400, "data must be a base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise WorkloadRefusal(400, "data is not valid base64") from None


class _LogLimiter:
    """One journal line per key a minute: a module stuck in a retry loop must not wear the card."""

    def __init__(self) -> None:
        self._times: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        if len(self._times) >= LOG_KEYS_MAX:
            self._times = {k: t for k, t in self._times.items() if now - t < LOG_INTERVAL}
            if len(self._times) >= LOG_KEYS_MAX:  # a flood of pids: one line for them all
                key = "*"
        if now - self._times.get(key, -1e9) < LOG_INTERVAL:
            return False
        self._times[key] = now
        return True


class WorkloadApi:
    """The workload socket. `sign(module_id, generation_id, data)` returns the HMAC-SHA256 digest
    with that module's key, or None when gatewayd knows no such module or generation;
    `owner_of(pid)` names the module whose process pid is, or None (see gateway.modules.peer).
    Both, and `trust_bundle()`, are called in a worker thread."""

    def __init__(self, socket_path: Path, *, trust_bundle: Callable[[], str],
                 sign: Callable[[str, str, bytes], bytes | None],
                 owner_of: Callable[[int], str | None]) -> None:
        self.path = Path(socket_path)
        self._trust_bundle = trust_bundle
        self._sign = sign
        self._owner_of = owner_of
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._limiter = _LogLimiter()
        self._counts = {"requests": 0, "signed": 0, "refused": 0, "errors": 0}

    @property
    def stats(self) -> WorkloadStats:
        return WorkloadStats(connections=len(self._writers), **self._counts)

    async def start(self) -> None:
        """Listen; a socket file left by a killed gatewayd is replaced, anything else refused."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _clear_stale, self.path)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        except OSError as exc:
            raise ConfigError(f"workload socket {self.path}: cannot listen: {exc.strerror}; "
                              "check that its directory exists and gatewayd may write it") from exc
        await loop.run_in_executor(None, os.chmod, self.path, 0o666)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 3.0)
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                await asyncio.get_running_loop().run_in_executor(None, self.path.unlink)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11

        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_MAX)
        if len(self._writers) >= CONNECTIONS_MAX:
            self._counts["errors"] += 1
            writer.write(_encode(conn, 503, {"message": f"over {CONNECTIONS_MAX} connections "
                                                        "open: retry later"}, close=True))
            writer.close()
            return
        self._writers.add(writer)
        try:
            caller = peer_credentials(writer.get_extra_info("socket"))
            await self._requests(conn, reader, writer, caller)
        except (TimeoutError, ConnectionError):
            pass
        except h11.RemoteProtocolError as exc:
            self._counts["errors"] += 1
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = exc.error_status_hint
                with contextlib.suppress(ConnectionError, h11.LocalProtocolError):
                    writer.write(_encode(conn, status, {"message": f"bad request: {exc}"},
                                         close=True))
                    await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _requests(self, conn: h11.Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, caller: PeerCred) -> None:
        """Answer requests on one connection until either side ends it (keep-alive)."""
        import h11

        while True:
            request = await _next_event(conn, reader)
            if not isinstance(request, h11.Request):
                return  # the caller closed between requests
            try:
                body = await _read_body(conn, reader, request)
                reply = await self._answer(request, body, caller)
            except WorkloadRefusal as exc:
                reply = self._refusal(exc)
            except Exception:  # a callback's bug: answer, log it, keep serving the others
                LOGGER.exception("workload API: answering %s failed", request.target)
                self._counts["errors"] += 1
                reply = 500, {"message": "internal error in gatewayd: see its journal"}, ""
            keep = conn.their_state is h11.DONE
            writer.write(_encode(conn, reply[0], reply[1], close=not keep, allow=reply[2]))
            await writer.drain()
            if not keep or conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()

    def _refusal(self, exc: WorkloadRefusal) -> tuple[int, dict[str, Any], str]:
        self._counts["refused" if exc.status == 403 else "errors"] += 1
        return exc.status, {"message": exc.message}, exc.allow

    async def _answer(self, request: h11.Request, body: bytes,
                      caller: PeerCred) -> tuple[int, dict[str, Any], str]:
        self._counts["requests"] += 1
        target = parse_target(request.method, request.target)
        if target.kind == "trust-bundle":
            return 200, {"certificate": await _in_thread(self._trust_bundle)}, ""
        owner = await _in_thread(self._owner_of, caller.pid)
        if owner != target.module_id:
            self._log_refused(caller, target.module_id, owner)
            raise WorkloadRefusal(403, f"pid {caller.pid} is not a process of module "
                                       f"{target.module_id!r}: only that module may sign for it")
        data = parse_sign_body(body)
        digest = await _in_thread(self._sign, target.module_id, target.generation_id, data)
        if digest is None:
            raise WorkloadRefusal(404, f"no module {target.module_id!r} with generation id "
                                       f"{target.generation_id!r}: restart the module so that "
                                       "it reads the IOTEDGE_MODULEGENERATIONID in force")
        self._counts["signed"] += 1
        return 200, {"digest": base64.b64encode(digest).decode("ascii")}, ""

    def _log_refused(self, caller: PeerCred, module_id: str, owner: str | None) -> None:
        if not self._limiter.allow(f"{caller.pid}:{module_id}"):
            return
        who = f"a process of module {owner!r}" if owner else "no module's process"
        event(Event.WORKLOAD_REFUSED,
              f"workload API: pid {caller.pid} (uid {caller.uid}) asked to sign for module "
              f"{module_id!r} but is {who}; refused (403). Only a module's own processes may "
              "sign for it: run the code as that module from the deployment, not by hand",
              level=logging.WARNING, module_id=module_id, caller_pid=caller.pid,
              caller_uid=caller.uid)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    """The next h11 event, reading as needed; a silent peer is cut after IDLE_TIMEOUT."""
    import h11

    while True:
        ev = conn.next_event()
        if ev is not h11.NEED_DATA:
            return ev
        data = await asyncio.wait_for(reader.read(READ_CHUNK), IDLE_TIMEOUT)
        conn.receive_data(data)


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader,
                     request: h11.Request) -> bytes:
    """The whole body, refused (413) as soon as it is known to be over BODY_MAX."""
    import h11

    for name, value in request.headers:
        if name == b"content-length" and int(value) > BODY_MAX:
            raise WorkloadRefusal(413, f"the body is over {BODY_MAX} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        ev = await _next_event(conn, reader)
        if isinstance(ev, h11.Data):
            size += len(ev.data)
            if size > BODY_MAX:
                raise WorkloadRefusal(413, f"the body is over {BODY_MAX} bytes")
            chunks.append(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            return b"".join(chunks)
        else:  # ConnectionClosed in the middle of the body
            raise ConnectionResetError("the caller closed during the body")


def _encode(conn: h11.Connection, status: int, body: dict[str, Any], *, close: bool,
            allow: str = "") -> bytes:
    import http

    import h11

    payload = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    if allow:
        headers.append(("Allow", allow))
    if close:
        headers.append(("Connection", "close"))
    reason = http.HTTPStatus(status).phrase.encode()
    return b"".join((conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
                     or b"", conn.send(h11.Data(data=payload)) or b"",
                     conn.send(h11.EndOfMessage()) or b""))


async def _in_thread(func: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


def _clear_stale(path: Path) -> None:
    """Remove a socket left behind; refuse to remove a file that is not a socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"workload socket {path}: a file that is not a socket is in the way; "
                          "move it or choose another path")
    path.unlink()
