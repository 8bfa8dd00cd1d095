"""A TCP proxy the test controls: it forwards to a target and can cut every connection at once.

Used between gatewayd and the cloud broker to make link flaps at chosen moments: `cut()` resets
every open connection (RST, as a dropped link surfaces to the daemon sooner or later), and
`down()`/`up()` refuse new connections meanwhile. Threads and blocking sockets: small and plain.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from .broker import free_port


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.cuts = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._up = threading.Event()
        self._up.set()
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=64)
        self._closing = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def cut(self) -> int:
        """Reset every open connection through the proxy; returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self.cuts += 1
        for a, b in pairs:
            _reset(a)
            _reset(b)
        return len(pairs)

    def down(self) -> None:
        self._up.clear()
        self.cut()

    def up(self) -> None:
        self._up.set()

    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        self.cut()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _reset(src)
        _reset(dst)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), not FIN: the peer sees a broken link, not a goodbye."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes the pump blocked in recv(); sends nothing
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sock.close()
