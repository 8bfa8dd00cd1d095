"""A workload API served on its own event loop thread, and plain HTTP clients for its socket.

The tests talk to the socket with blocking clients (http.client, a raw socket, the SDK in a
subprocess), so the server's loop runs in a thread of its own, as it would in gatewayd beside
other work. Callbacks given to it run in that loop's worker threads.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.modules.workload import WorkloadApi


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket: the host name is only what goes in the Host header."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)

    def __enter__(self) -> UnixHTTPConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ask(conn: http.client.HTTPConnection, method: str, target: str,
        body: object = None) -> tuple[int, dict]:
    """One request on `conn` (kept open); the status and the JSON answer."""
    payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, target, body=payload)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


@contextmanager
def serving(path: Path, *, trust_bundle: Callable[[], str],
            sign: Callable[[str, str, bytes], bytes | None],
            owner_of: Callable[[int], str | None]) -> Iterator[WorkloadApi]:
    """A started WorkloadApi on `path`, closed (and its loop stopped) on the way out."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="workload-loop", daemon=True)
    thread.start()
    api = WorkloadApi(path, trust_bundle=trust_bundle, sign=sign, owner_of=owner_of)
    try:
        asyncio.run_coroutine_threadsafe(api.start(), loop).result(10)
        yield api
    finally:
        asyncio.run_coroutine_threadsafe(api.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
