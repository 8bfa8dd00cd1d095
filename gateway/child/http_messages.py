"""The HTTPS head's request and answer as values, apart from the parser that reads them.

The hub's method endpoint and the console take and give these; keeping them out of https.py
means a gateway whose 443 head is not configured never imports h11 or wsproto (about 2.5 MiB
of a Pi's memory, issue 18).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.errors import PeerError


class HttpRefused(PeerError):
    """The request is answered with `status` and closed; the message says why."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.headers = headers


@dataclass(frozen=True)
class HttpRequest:
    """What the Handler gets: the path's segments percent-decoded, header names lower-cased."""

    method: str
    path: str  # as sent, without the query string
    segments: tuple[str, ...]  # the path split at "/", each percent-decoded
    query: Mapping[str, tuple[str, ...]]
    headers: Mapping[str, str]
    body: bytes
    peer: str


@dataclass(frozen=True)
class HttpAnswer:
    """The status and a JSON body; `refusal` (the reason) asks for one journal line."""

    status: int
    body: object = None
    refusal: str = ""
    caller: str = ""  # who asked, for the journal line (a module's identity)
    headers: tuple[tuple[str, str], ...] = field(default=())


def refused(status: int, message: str, caller: str = "") -> HttpAnswer:
    """A refusal answered as IoT Hub answers one: `{"message": ...}` with the status."""
    return HttpAnswer(status, {"message": message}, refusal=message, caller=caller)
