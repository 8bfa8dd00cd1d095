"""Logging: numbered events, to the journal under systemd and to stderr otherwise.

Every kind of event an operator may search for has a fixed MESSAGE_ID, so that a fleet query like
`journalctl MESSAGE_ID=<uplink-lost>` keeps working when the wording changes. Structured fields
(GATEWAY_ID, DEVICE_ID, SEQ...) ride along as journal fields; on stderr they are appended as
`key=value` so that the line is still readable by a person.

Nothing is logged per message: callers log state changes and periodic summaries.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from enum import Enum

LOGGER = logging.getLogger("gatewayd")
_identity: dict[str, str] = {"GATEWAY_ID": ""}


class Event(Enum):
    """Kinds of events; the value is the journal MESSAGE_ID (stable across releases)."""

    STARTED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000001"
    STOPPED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000002"
    CONFIG_ERROR = "5b0a0e1c2f4c4d6a9a7e2f3c1d000003"
    UPLINK_UP = "5b0a0e1c2f4c4d6a9a7e2f3c1d000010"
    UPLINK_LOST = "5b0a0e1c2f4c4d6a9a7e2f3c1d000011"
    UPLINK_FAILED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000012"
    UPLINK_REFUSED_MESSAGE = "5b0a0e1c2f4c4d6a9a7e2f3c1d000013"
    CHILD_CONNECTED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000020"
    CHILD_REFUSED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000021"
    CHILD_CLOSED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000022"
    CHILD_PROTOCOL_ERROR = "5b0a0e1c2f4c4d6a9a7e2f3c1d000023"
    CHILD_THROTTLED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000024"
    REGISTRY_APPLIED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000030"
    REGISTRY_REFUSED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000031"
    SETTINGS_APPLIED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000032"
    SETTINGS_REFUSED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000033"
    CLOUD_DOCUMENT_REFUSED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000034"
    TWINS_RECONCILED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000035"
    CONFIG_RELOADED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000004"
    MESSAGES_EXPIRED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000040"
    STORE_ERROR = "5b0a0e1c2f4c4d6a9a7e2f3c1d000041"
    DISK_FULL = "5b0a0e1c2f4c4d6a9a7e2f3c1d000042"
    STORE_SALVAGED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000043"
    SUMMARY = "5b0a0e1c2f4c4d6a9a7e2f3c1d000050"
    MODULE_STARTED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000060"
    MODULE_EXITED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000061"
    MODULE_STOPPED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000062"
    MODULE_USER_IGNORED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000063"
    DEPLOYMENT_APPLIED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000064"
    DEPLOYMENT_REFUSED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000065"
    WORKLOAD_REFUSED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000066"
    WEBSOCKET_REFUSED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000070"
    HTTPS_REFUSED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000080"
    AMQP_REFUSED = "5b0a0e1c2f4c4d6a9a7e2f3c1d000090"
    LEDGER_RESET = "5b0a0e1c2f4c4d6a9a7e2f3c1d0000a0"
    CONSOLE_STARTED = "5b0a0e1c2f4c4d6a9a7e2f3c1d0000b0"
    CONSOLE_CHANGED = "5b0a0e1c2f4c4d6a9a7e2f3c1d0000b1"
    CONSOLE_REFUSED = "5b0a0e1c2f4c4d6a9a7e2f3c1d0000b2"


def event(kind: Event, message: str, *, level: int = logging.INFO, **fields: object) -> None:
    """Log one event with its MESSAGE_ID and structured fields."""
    extra = {"gw_event": kind, "gw_fields": {k.upper(): v for k, v in fields.items()}}
    LOGGER.log(level, message, extra=extra)


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname.lower():7} {record.getMessage()}"
        fields = getattr(record, "gw_fields", None)
        if fields:
            line += " " + " ".join(f"{k.lower()}={v}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _journal_handler() -> logging.Handler | None:
    """A journal handler when running under systemd and systemd-python is importable."""
    if not os.environ.get("JOURNAL_STREAM") and not os.environ.get("INVOCATION_ID"):
        return None
    try:
        from systemd import journal  # type: ignore[import-not-found]
    except ImportError:
        return None

    class JournalHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kind = getattr(record, "gw_event", None)
            fields = dict(_identity)
            fields.update((k, str(v)) for k, v in getattr(record, "gw_fields", {}).items())
            if kind is not None:
                fields["MESSAGE_ID"] = kind.value
            journal.send(
                record.getMessage(),
                PRIORITY=str(_syslog_priority(record.levelno)),
                SYSLOG_IDENTIFIER="gatewayd",
                **fields,
            )

    return JournalHandler()


def _syslog_priority(level: int) -> int:
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    if level >= logging.INFO:
        return 6
    return 7


def setup(level: str = "info", gateway_id: str | None = None) -> None:
    """Route gatewayd's records to the journal or stderr, once, at start-up."""
    handler = _journal_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_StderrFormatter())
    _identity["GATEWAY_ID"] = gateway_id or ""
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level.upper())
    LOGGER.propagate = False



def set_level(level: str) -> None:
    """A reload may change the level; handlers stay as they are."""
    LOGGER.setLevel(level.upper())
