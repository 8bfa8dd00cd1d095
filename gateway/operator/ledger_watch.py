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
    """Accounts of every gateway heard (or of `gateways` only), fed from paho's thread and read
    from any other: `gatewayctl verify`, the console and scripts share this one."""

    def __init__(self, since: int | None = None, gateways: list[str] | None = None,
                 on_ignored=None) -> None:
        self._accounts = LossAccounts(since)
        self._lock = threading.Lock()
        self._wanted = set(gateways) if gateways is not None else None
        # the `issued` of each gateway's first two settlements: they bound the judged window
        self._window: dict[str, list[int]] = {}
        self._on_ignored = on_ignored
        self.started = time.time()
        self.ignored = 0  # ledger documents that were not settlements

    def start(self, session: CloudSession) -> LedgerWatch:
        p = session.prefix
        ledgers = ([contract.ledger_topic(p, "+")] if self._wanted is None
                   else [contract.ledger_topic(p, gw) for gw in sorted(self._wanted)])
        session.stream([contract.telemetry_topic(p, "+"), contract.telemetry_topic(p, "+/+"),
                        *ledgers], self.on_message)
        return self

    def on_message(self, topic: str, payload: bytes, props: list[tuple[str, str]]) -> None:
        if topic.endswith("/ledger"):
            self._settlement(payload)
            return
        found = dict(props)
        gw, seq = found.get("gw"), found.get("seq", "")
        if gw and seq.isdigit() and self._heard(gw):
            with self._lock:
                self._accounts.telemetry(gw, int(seq))

    def _heard(self, gateway: str) -> bool:
        return self._wanted is None or gateway in self._wanted

    def _settlement(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            with self._lock:
                self._accounts.settlement(doc)
                window = self._window.setdefault(doc["gw"], [])
                if len(window) < 2:
                    window.append(int(doc["issued"]))
        except (ValueError, TypeError, KeyError) as exc:
            self.ignored += 1
            if self._on_ignored is not None:
                self._on_ignored(exc)

    def accounts(self, gateway: str) -> Accounts:
        """Its accounts so far; `start` is None until its first settlement arrives."""
        with self._lock:
            return self._accounts.accounts(gateway)

    def snapshot(self, gateways: list[str]) -> list[Accounts]:
        """The accounts of `gateways`, taken together under one lock."""
        with self._lock:
            return [self._accounts.accounts(gw) for gw in gateways]

    def settled(self, gateways: list[str], since_given: bool) -> bool:
        """Whether every seq issued by the end of the judged window has ended, for each of
        `gateways`. The window runs from the start to the `issued` of the next settlement after
        the one that set the start (with `since`: to that of the first)."""
        need = 1 if since_given else 2
        with self._lock:
            for gw in gateways:
                window = self._window.get(gw, [])
                if len(window) < need:
                    return False
                if self._accounts.accounts(gw).settled_below < window[need - 1]:
                    return False
        return True
