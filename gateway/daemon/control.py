"""The local control socket that `gatewayctl` talks to: one JSON request line, one JSON answer.

A unix socket, not TCP: only root and the service's group can read the gateway's state, and
nothing is exposed on the network. The socket file is created with mode 0660.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

MAX_REQUEST = 4096


class ControlServer:
    """Answers `{"cmd": name, "args": [...]}` with `commands[name](*args)`, as JSON."""

    def __init__(self, path: Path, commands: dict[str, Callable[..., dict]]) -> None:
        self.path = Path(path)
        self._commands = commands
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old_umask = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._serve, str(self.path))
        finally:
            os.umask(old_umask)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            answer = self._answer(line[:MAX_REQUEST])
            writer.write(json.dumps(answer, sort_keys=True).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line or b"{}")
            command = self._commands[request["cmd"]]
            args = [str(a) for a in request.get("args", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return {"error": f"unknown request; known commands: {sorted(self._commands)}"}
        try:
            return command(*args)
        except TypeError:
            return {"error": f"wrong arguments for {request['cmd']}: {args}"}
        except ValueError as exc:
            return {"error": str(exc)}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def request(path: Path, cmd: str, *args: str, timeout: float = 5.0) -> dict:
    """Ask the running daemon; raises OSError when it is not running or not reachable."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": cmd, "args": list(args)}).encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return json.loads(b"".join(chunks))
