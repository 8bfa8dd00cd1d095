"""The console's HTTP server: asyncio and h11, one request per connection, pages built in threads.

The request is read by the same capped h11 exchange as the gateway's 443 head (head and body
limits, a refusal as a status); the page is built by `Pages.handle` in a worker thread, since
the Operator waits on the cloud broker, and written back with `Connection: close`. Nothing here
keeps state between requests but the form token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from gateway.child.http_messages import HttpRefused
from gateway.child.https import Exchange, headers_of, http_request
from gateway.console.access import Listen, check_listen, password_ok, tls_context
from gateway.console.pages import Answer, Pages
from gateway.log import Event, event

BODY_MAX = 256 * 1024  # a form: a deployment document or a 32 KiB twin patch, url-encoded
READ_SECS = 30.0  # a request's head and body; a client that trickles bytes is cut off


class ConsoleServer:
    def __init__(self, pages: Pages, listen: Listen) -> None:
        check_listen(listen)
        self.pages = pages
        self.listen = listen
        self._ssl = tls_context(listen)
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        """Bind; the port actually bound (the listen port may be 0)."""
        self._server = await asyncio.start_server(self._serve, self.listen.host, self.listen.port,
                                                  ssl=self._ssl)
        return self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        exchange = Exchange(reader, writer)
        peer = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout(READ_SECS):
                head = await exchange.head()
                if not password_ok(self.listen, headers_of(head).get("authorization", "")):
                    exchange.answer(401, b"the console's password is needed\n",
                                    (("WWW-Authenticate", 'Basic realm="gatewayd console"'),),
                                    "text/plain; charset=utf-8")
                    return
                body = await exchange.body(head, BODY_MAX)
            request = http_request(head, body, str(peer[0]) if peer else "")
            answer: Answer = await asyncio.to_thread(self.pages.handle, request)
            exchange.answer(answer.status, answer.body, answer.headers, answer.content_type)
        except HttpRefused as exc:
            exchange.refuse(exc)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
                writer.close()
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def serve(pages: Pages, listen: Listen, ready: Callable[[int], None]) -> None:
    """Run until SIGINT or SIGTERM; `ready(port)` once the socket is bound."""
    server = ConsoleServer(pages, listen)
    port = await server.start()
    ready(port)
    event(Event.CONSOLE_STARTED, f"console listening on {listen.scheme}://{listen.host}:{port}/",
          level=logging.INFO)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
