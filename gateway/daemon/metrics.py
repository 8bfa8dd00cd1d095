"""Prometheus metrics on a loopback port (off by default: `[metrics] port = 9464`).

The numbers are the ones `gatewayctl status` shows, taken from the same status() call when a
scrape arrives, so there is nothing to keep in step and nothing is computed per message. A tiny
HTTP/1.0 responder on the event loop: one GET, one answer, close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(s: dict) -> str:
    """The exposition text for one status() dict."""
    up = s["uplink"]
    backlog = s["backlog"]
    lines: list[str] = []
    described: set[str] = set()

    def declare(name: str, kind: str, help_text: str) -> None:
        """A family's HELP and TYPE, once: also for a family with no sample (yet)."""
        if name not in described:
            described.add(name)
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

    def metric(name: str, kind: str, help_text: str, value: float | None,
               labels: str = "") -> None:
        declare(name, kind, help_text)
        lines.append(f"{name}{labels} {0 if value is None else value}")

    metric("gatewayd_uplink_up", "gauge", "1 when the cloud connection is up",
           1 if up.get("state") == "online" else 0)
    metric("gatewayd_children_connected", "gauge", "children connected", len(s["children"]))
    for listener, count in s.get("connections", {}).items():
        metric("gatewayd_connections", "gauge", "connections open, per listener (head)",
               count, f'{{listener="{listener}"}}')
    metric("gatewayd_children_refused_total", "counter", "CONNECTs refused",
           s["children_refused"])
    metric("gatewayd_children_connects_total", "counter",
           "CONNECTs accepted (a child that flaps makes it climb)", s.get("children_admitted", 0))
    metric("gatewayd_uplink_connects_total", "counter", "connections made to the cloud broker",
           up.get("connects", 0))
    for outcome, count in s.get("https_methods", {}).items():
        metric("gatewayd_https_requests_total", "counter",
               "modules' HTTPS method calls on the 443 head, answered or refused", count,
               f'{{outcome="{outcome}"}}')
    metric("gatewayd_backlog_messages", "gauge", "messages waiting for the cloud",
           backlog["messages"])
    metric("gatewayd_backlog_bytes", "gauge", "bytes waiting for the cloud", backlog["bytes"])
    metric("gatewayd_backlog_oldest_age_seconds", "gauge", "age of the oldest waiting message",
           backlog["oldest_age_secs"])
    for priority, count in backlog.get("by_priority", {}).items():
        metric("gatewayd_backlog_messages_by_priority", "gauge",
               "messages waiting, per route priority", count, f'{{priority="{priority}"}}')
    metric("gatewayd_messages_accepted_rate", "gauge", "messages in per second",
           s["rates"]["in_msgs"])
    metric("gatewayd_messages_delivered_rate", "gauge", "messages acknowledged by the cloud "
           "per second", s["rates"]["out_msgs"])
    metric("gatewayd_messages_delivered_total", "counter", "messages acknowledged by the cloud",
           s["outbox"]["delivered"])
    metric("gatewayd_messages_expired_total", "counter", "messages dropped unsent at their TTL",
           s["outbox"]["expired"])
    metric("gatewayd_messages_dropped_total", "counter",
           "messages the disk guard dropped (storage.full_policy = drop-oldest)",
           s["outbox"].get("dropped_full", 0))
    metric("gatewayd_time_to_live_seconds", "gauge", "the time to live given to new messages",
           s.get("time_to_live_secs"))
    metric("gatewayd_messages_refused_total", "counter", "refusals by the cloud broker",
           up.get("refused", 0))
    metric("gatewayd_dead_letters", "gauge", "messages set aside after refusals",
           s["dead_letters"])
    metric("gatewayd_disk_free_bytes", "gauge", "free bytes under the storage path",
           s["disk"]["free_bytes"])
    metric("gatewayd_store_bytes", "gauge", "bytes of the store's files", s["store_bytes"])
    metric("gatewayd_drain_seconds_left", "gauge", "projected time to empty the backlog",
           s["projections"]["drain_secs"])
    metric("gatewayd_process_write_bytes_total", "counter", "bytes the process wrote",
           s["process_write_bytes"])
    metric("gatewayd_registry_version", "gauge", "registry version in force",
           s["registry_version"])
    modules = sorted((s.get("modules") or {}).get("modules", {}).items())
    declare("gatewayd_module_restarts", "gauge",
            "restarts of a module by its policy since its spec was deployed")  # none deployed
    for name, module in modules:
        metric("gatewayd_module_restarts", "gauge", "", module.get("restartCount", 0),
               f'{{module="{name}"}}')
    ledger = s.get("ledger") or {}
    if ledger:
        metric("gatewayd_ledger_settlements_total", "counter",
               "loss ledger settlements published", ledger["published"])
        metric("gatewayd_ledger_bytes_total", "counter",
               "bytes of loss ledger settlements published", ledger["published_bytes"])
        metric("gatewayd_ledger_state_bytes_total", "counter",
               "bytes of the ledger's state put into the store's batches (its cost on the card)",
               ledger["state_bytes"])
        for kind, count in sorted(ledger["unsettled"].items()):
            metric("gatewayd_ledger_unsettled", "gauge",
                   "accounts not yet acknowledged by the broker, per outcome", count,
                   f'{{kind="{kind}"}}')
    return "\n".join(lines) + "\n"


class MetricsServer:
    def __init__(self, host: str, port: int, status: Callable[[], dict]) -> None:
        self._host, self._port, self._status = host, port, status
        self._server: asyncio.AbstractServer | None = None
        self.bound: tuple[str, int] | None = None

    async def start(self) -> None:
        if not self._port:
            return
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        self.bound = self._server.sockets[0].getsockname()[:2]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if request.startswith(b"GET ") and path in (b"/metrics", b"/"):
                body, head = render(self._status()).encode(), b"200 OK"
            else:
                body, head = b"only GET /metrics here\n", b"404 Not Found"
            writer.write(b"HTTP/1.0 " + head + b"\r\nContent-Type: " + CONTENT_TYPE.encode()
                         + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                         + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
