"""HTTP/1.1 on the 443 head: one request read with h11, its head and body capped, one answer.

The 443 listener reads a request head first (this module); a WebSocket upgrade then goes to
websocket.py, and any other request is an HTTPS request: its body is read (at most BODY_MAX
bytes, Content-Length or chunked), it is handed to the Handler's `on_https_request` as an
`HttpRequest`, and the `HttpAnswer` that comes back is written with `Connection: close`. One
request per connection: the SDKs open a connection per call (azure-iot-device makes a new
`requests` session each time), so keep-alive would only hold sockets open.

h11 is sans-io: bytes go in, events come out, and the asyncio loop does every read and write.
Its own cap on a head (max_incomplete_event_size) only counts what is still incomplete after a
read, and one read can hold far more, so the head is counted here as well.
"""

from __future__ import annotations

import asyncio
import http
import json
from types import MappingProxyType
from urllib.parse import parse_qs, unquote

import h11

from gateway.child.http_messages import HttpAnswer, HttpRefused, HttpRequest

HEAD_MAX = 16 * 1024  # request line and headers; the SDKs send about 300 to 1500 bytes
BODY_MAX = 128 * 1024  # a method call's JSON: IoT Hub caps a method payload at 128 KB
READ_CHUNK = 65536


class Exchange:
    """One request and its answer on one connection (the socket's stream pair)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_MAX)

    async def head(self) -> h11.Request:
        """The request line and headers, capped at HEAD_MAX however they arrive."""
        received = 0
        try:
            while (ev := self.conn.next_event()) is h11.NEED_DATA:
                if received > HEAD_MAX:
                    break
                data = await self.reader.read(READ_CHUNK)
                received += len(data)
                self.conn.receive_data(data)
        except h11.RemoteProtocolError as exc:
            raise HttpRefused(exc.error_status_hint, f"bad HTTP request: {exc}") from None
        head = received - len(self.conn.trailing_data[0])  # what follows the head: body, frames
        if ev is h11.NEED_DATA or head > HEAD_MAX:
            raise HttpRefused(431, f"bad HTTP request: the head is over {HEAD_MAX} bytes")
        if not isinstance(ev, h11.Request):
            raise ConnectionResetError("closed before a request")
        return ev

    async def next_event(self) -> object:
        try:
            while (ev := self.conn.next_event()) is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(READ_CHUNK))
        except h11.RemoteProtocolError as exc:
            raise HttpRefused(exc.error_status_hint, f"bad HTTP request: {exc}") from None
        return ev

    async def body(self, request: h11.Request, limit: int = BODY_MAX) -> bytes:
        """The whole body, refused with 413 as soon as it passes `limit` (before it is all read:
        a declared length over the limit is refused on sight)."""
        declared = headers_of(request).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HttpRefused(413, f"the body is {declared} bytes, over {limit}")
        parts: list[bytes] = []
        size = 0
        while isinstance(ev := await self.next_event(), h11.Data):
            size += len(ev.data)
            if size > limit:
                raise HttpRefused(413, f"the body is over {limit} bytes")
            parts.append(bytes(ev.data))
        if not isinstance(ev, h11.EndOfMessage):
            raise ConnectionResetError("closed before the end of the body")
        return b"".join(parts)

    def answer(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = (),
               content_type: str = "application/json; charset=utf-8") -> None:
        """The response, whole, then the connection is the caller's to close; nothing if a
        response already went out (or cannot: h11 says which)."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        all_headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Connection", "close"), *headers]
        reason = http.HTTPStatus(status).phrase.encode() if status in _PHRASES else b""
        try:
            out = self.conn.send(h11.Response(status_code=status, headers=all_headers,
                                              reason=reason))
            out += self.conn.send(h11.Data(data=body)) or b""
            out += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return
        if not self.writer.is_closing():
            self.writer.write(out)

    def refuse(self, refusal: HttpRefused, as_json: bool = False) -> None:
        """Answer with the status and the reason, as text (WebSocket clients read it) or as
        IoT Hub's JSON error (HTTPS callers)."""
        if as_json:
            body = json.dumps({"message": refusal.message}).encode()
            self.answer(refusal.status, body, refusal.headers)
        else:
            self.answer(refusal.status, (refusal.message + "\n").encode(), refusal.headers,
                        "text/plain; charset=utf-8")

    def send_answer(self, answer: HttpAnswer) -> None:
        self.answer(answer.status, json.dumps(answer.body).encode(), answer.headers)


_PHRASES = {s.value for s in http.HTTPStatus}


def headers_of(request: h11.Request) -> dict[str, str]:
    """Header names lower-cased (h11 does it), repeated headers joined as HTTP allows."""
    out: dict[str, str] = {}
    for name, value in request.headers:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


def is_upgrade(request: h11.Request) -> bool:
    """Whether the request asks for a WebSocket (the rest of its checks are websocket.py's)."""
    return "websocket" in tokens(headers_of(request).get("upgrade", ""))


def http_request(request: h11.Request, body: bytes, peer: str) -> HttpRequest:
    target = request.target.decode("latin-1")
    path, _, query = target.partition("?")
    parsed = parse_qs(query, keep_blank_values=True)
    return HttpRequest(
        method=request.method.decode("latin-1"),
        path=path,
        segments=tuple(unquote(s) for s in path.strip("/").split("/")),
        query=MappingProxyType({k: tuple(v) for k, v in parsed.items()}),
        headers=MappingProxyType(headers_of(request)),
        body=body,
        peer=peer,
    )
