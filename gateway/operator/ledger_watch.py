"""The loss ledger watched live: every gateway's accounts from the moment watching began.

A settlement is not retained (docs/cloud-contract.md), so accounts exist only for whoever
listens: the watch subscribes to every gateway's telemetry and settlements and feeds a
LossAccounts from paho's thread, while pages or scripts read it from theirs. What it holds is
derived from the stream, never a second copy of a document: a restarted watch starts again.
"""

from __future__ import annotations

import json
import threading
import time

from gateway.operator.ledger import Accounts, LossAccounts
from gateway.operator.session import CloudSession
from gateway.upstream import cloud_contract as contract


class LedgerWatch:
    def __init__(self, since: int | None = None) -> None:
        self._accounts = LossAccounts(since)
        self._lock = threading.Lock()
        self.started = time.time()
        self.ignored = 0  # ledger documents that were not settlements

    def start(self, session: CloudSession) -> LedgerWatch:
        p = session.prefix
        session.stream([contract.telemetry_topic(p, "+"), contract.telemetry_topic(p, "+/+"),
                        contract.ledger_topic(p, "+")], self.on_message)
        return self

    def on_message(self, topic: str, payload: bytes, props: list[tuple[str, str]]) -> None:
        if topic.endswith("/ledger"):
            try:
                doc = json.loads(payload)
                with self._lock:
                    self._accounts.settlement(doc)
            except (ValueError, TypeError):
                self.ignored += 1
            return
        found = dict(props)
        gw, seq = found.get("gw"), found.get("seq", "")
        if gw and seq.isdigit():
            with self._lock:
                self._accounts.telemetry(gw, int(seq))

    def accounts(self, gateway: str) -> Accounts:
        """Its accounts so far; `start` is None until its first settlement arrives."""
        with self._lock:
            return self._accounts.accounts(gateway)
