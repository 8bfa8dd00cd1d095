"""What every connection's I/O needs, whatever its layer: cutting a transport at once.

Python 3.11.2, the interpreter of Debian bookworm and Raspberry Pi OS, raises AttributeError from
a TLS transport's abort() once the transport has closed (its protocol is already gone; later 3.11
releases check for it). A cut of a connection that is already closed is what the caller wanted,
so it is not an error here, and it must not end the task that serves the connection.
"""

from __future__ import annotations

import asyncio


def abort(transport: asyncio.BaseTransport | None) -> None:
    """Close now, dropping what is buffered; a no-op on a transport that is already closed."""
    if transport is None:
        return
    try:
        transport.abort()
    except AttributeError:
        if not transport.is_closing():
            raise
