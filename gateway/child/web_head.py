"""The 443 head's first request: a WebSocket upgrade (MQTT or AMQP inside) or one HTTPS call.

ChildServer hands every connection of the 443 listener here first. An upgrade comes back as its
subprotocol and the streams a ChildConnection (mqtt) or an AmqpConnection (AMQPWSB10) then runs
on; any other request is an HTTPS request (a module's direct method), answered and closed here.
The request is read within listen.connect_timeout_secs and counted against the connection cap
until its answer is written; a refusal is answered, logged once and closed.

The server imports this module only once the 443 listener is bound, so that a gateway without
that head never loads h11 or wsproto (issue 18: about 2.5 MiB of a Pi's memory).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from gateway import sockets
from gateway.child import https, websocket
from gateway.child.http_messages import HttpAnswer, HttpRefused, HttpRequest, refused
from gateway.child.websocket import AMQP_SUBPROTOCOL  # noqa: F401 - the server asks for it here
from gateway.errors import PeerError
from gateway.log import Event

if TYPE_CHECKING:
    from gateway.child.server import ChildServer

Streams = tuple[websocket.WsReader, websocket.WsWriter]


class _HttpsRefused(PeerError):
    """An HTTPS request refused while its body was read: the refusal and what was asked."""

    def __init__(self, refusal: HttpRefused, request: HttpRequest) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.request = request


async def open_request(server: ChildServer, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> tuple[str, Streams] | None:
    """(the subprotocol, the WebSocket streams) after an upgrade; None once an HTTPS request
    or a refusal has been answered and the connection closed."""
    exchange = https.Exchange(reader, writer)
    server.http_open += 1
    try:
        kind, got = await asyncio.wait_for(
            _first_request(exchange, sockets.peer_name(writer)), server.connect_timeout)
        if kind == "ws":
            protocol, trailing = got
            return protocol, websocket.streams(reader, writer, server.max_message_bytes,
                                               trailing, protocol)
        await _answer_https(server, exchange, got)
    except HttpRefused as exc:
        _refuse_upgrade(server, exchange, exc)
    except _HttpsRefused as exc:
        _refuse_https(server, exchange, exc.refusal, exc.request)
    except (TimeoutError, ConnectionError, ssl.SSLError):
        sockets.abort(writer.transport)
        return None
    finally:
        server.http_open -= 1
    await sockets.close_after_flush(writer)
    return None


async def _first_request(exchange: https.Exchange, peer: str
                         ) -> tuple[str, tuple[str, bytes] | HttpRequest]:
    """("ws", (the subprotocol, the bytes after the 101's request)) or ("https", the whole
    request)."""
    request = await exchange.head()
    if https.is_upgrade(request):
        return "ws", await websocket.upgrade(exchange, request)
    try:
        body = await exchange.body(request)
    except HttpRefused as exc:
        raise _HttpsRefused(exc, https.http_request(request, b"", peer)) from None
    return "https", https.http_request(request, body, peer)


async def _answer_https(server: ChildServer, exchange: https.Exchange,
                        request: HttpRequest) -> None:
    """The handler's answer, however long the call it makes takes (a direct method waits up
    to its responseTimeoutInSeconds); a refusal among them gets its journal line."""
    answer = await server.handler.on_https_request(request)
    if answer.refusal:
        server.https_refused += 1
        _log_https(server, request, answer.status, answer.refusal, answer.caller)
    else:
        server.https_served += 1
    exchange.send_answer(answer)


def _refuse_https(server: ChildServer, exchange: https.Exchange, refusal: HttpRefused,
                  request: HttpRequest) -> None:
    server.https_refused += 1
    exchange.refuse(refusal, as_json=True)
    _log_https(server, request, refusal.status, refusal.message)


def _refuse_upgrade(server: ChildServer, exchange: https.Exchange, refusal: HttpRefused) -> None:
    exchange.refuse(refusal)
    server.log_limited(
        Event.WEBSOCKET_REFUSED,
        f"peer {sockets.peer_name(exchange.writer)}: WebSocket upgrade refused "
        f"({refusal.status}): {refusal.message}",
        cause=str(refusal.status),
    )


def _log_https(server: ChildServer, request: HttpRequest, status: int, reason: str,
               caller: str = "") -> None:
    who = f"module {caller} from {request.peer}" if caller else f"peer {request.peer}"
    server.log_limited(
        Event.HTTPS_REFUSED,
        f"{who}: HTTPS request refused ({status}): {request.method} {request.path[:200]}: "
        f"{reason}",
        device_id=caller,
        cause=str(status),
    )


def not_found(request: HttpRequest) -> HttpAnswer:
    """The answer of a Handler that serves no HTTPS call."""
    return refused(404, f"{request.method} {request.path[:200]}: not found; this port serves "
                        f"{websocket.SERVED}")
