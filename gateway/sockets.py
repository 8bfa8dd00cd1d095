"""What every connection's I/O needs, whatever its layer: the peer's name for the journal,
cutting a transport at once, and closing once a refusal's answer has left.

Python 3.11.2, the interpreter of Debian bookworm and Raspberry Pi OS, raises AttributeError from
a TLS transport's abort() once the transport has closed (its protocol is already gone; later 3.11
releases check for it). A cut of a connection that is already closed is what the caller wanted,
so it is not an error here, and it must not end the task that serves the connection.
"""

from __future__ import annotations

import asyncio
import contextlib


def abort(transport: asyncio.BaseTransport | None) -> None:
    """Close now, dropping what is buffered; a no-op on a transport that is already closed."""
    if transport is None:
        return
    try:
        transport.abort()
    except AttributeError:
        if not transport.is_closing():
            raise


CLOSE_GRACE_SECS = 2.0  # a closing peer's time to read what is left for it, before the cut


async def close_after_flush(writer: asyncio.StreamWriter) -> None:
    """Let a refusal's answer leave, then close; a peer that does not read it is cut."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_GRACE_SECS)
    abort(writer.transport)


def cut_later(transport: asyncio.BaseTransport) -> asyncio.TimerHandle:
    """After close(): cut the transport once the grace is over. close() waits for unread
    output to leave, so a peer that never reads would keep the socket and its buffer for ever."""
    return asyncio.get_running_loop().call_later(CLOSE_GRACE_SECS, abort, transport)


def peer_name(writer: asyncio.StreamWriter) -> str:
    """host:port of the other end, as the journal lines name a peer before it is identified."""
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "?"


def peer_cert(link: asyncio.BaseTransport | asyncio.StreamWriter) -> bytes | None:
    """The peer's X.509 certificate (DER), if it gave one in the TLS handshake: anything with
    the transport's get_extra_info will do."""
    ssl_object = link.get_extra_info("ssl_object")
    return None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
