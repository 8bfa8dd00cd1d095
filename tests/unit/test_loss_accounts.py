"""The cloud side's accounting of the loss ledger: every judged seq ends one way only."""

from __future__ import annotations

from gateway.operator.ledger import LossAccounts


def doc(first, to, issued, **lists):
    return {"gw": "edge-1", "from": first, "to": to, "issued": issued, **lists}


def test_judging_starts_at_the_first_settlements_issued_and_counts_each_outcome():
    acc = LossAccounts()
    for seq in range(1, 50):
        acc.telemetry("edge-1", seq)  # before the verifier knew where to start: not judged
    acc.settlement(doc(1, 50, 100))
    for seq in [*range(100, 120), *range(130, 140), 141, 142, 150, 151]:
        acc.telemetry("edge-1", seq)
    acc.telemetry("edge-1", 110)  # a duplicate
    acc.telemetry("edge-1", 145)  # after 151: reordered
    acc.telemetry("edge-1", 143)  # after 151 and 145: reordered
    acc.settlement(doc(50, 150, 160, expired=[[120, 124, 7200]], dropped=[[125, 129]],
                       deadLettered=[[140, 140]], skipped=[[144, 144]]))
    a = acc.accounts("edge-1")
    assert a.start == 100 and a.settled_below == 150
    assert (a.delivered, a.duplicates, a.reordered) == (36, 1, 2)
    assert (a.expired, a.dropped, a.dead_lettered, a.never_issued) == (5, 5, 1, 1)
    assert a.unaccounted == 4 and a.to_json()["unaccountedSeqs"] == [[146, 149]]
    assert a.issued == 60 - 1  # 100..159 but 144, never issued
    assert a.pending == a.issued - 36 - 5 - 5 - 1 - 4 == 8  # 152..159
    assert a.to_json()["deadLettered"] == 1


def test_a_received_message_counts_as_delivered_even_where_it_is_listed():
    acc = LossAccounts(since=10)
    for seq in range(10, 20):
        acc.telemetry("edge-1", seq)
    acc.settlement(doc(1, 20, 20, expired=[[15, 16, 60]], skipped=[[18, 25]]))
    a = acc.accounts("edge-1")
    assert (a.delivered, a.expired, a.never_issued, a.unaccounted) == (10, 0, 0, 0)
    assert a.issued == 10 and a.pending == 0


def test_policy_outcome_beats_never_issued_and_overlapping_settlements_agree():
    acc = LossAccounts(since=1)
    acc.settlement(doc(1, 30, 30, skipped=[[1, 29]], expired=[[5, 9, 10]]))
    acc.settlement(doc(1, 30, 30, skipped=[[1, 29]], expired=[[5, 9, 10]]))  # sent again
    a = acc.accounts("edge-1")
    assert (a.expired, a.never_issued, a.unaccounted, a.issued, a.pending) == (5, 24, 0, 5, 0)


def test_nothing_is_judged_before_a_settlement_and_gateways_are_apart():
    acc = LossAccounts()
    acc.telemetry("edge-2", 5)
    assert acc.accounts("edge-2").start is None and acc.accounts("edge-2").unaccounted == 0
    acc.settlement({**doc(1, 10, 10), "gw": "edge-3"})
    assert acc.gateways() == ["edge-2", "edge-3"]
    assert acc.accounts("edge-3").start == 10


def test_a_document_that_is_not_a_settlement_is_refused_by_name():
    acc = LossAccounts()
    for bad in ({}, {"gw": "g", "from": 5, "to": 1, "issued": 1}, {"gw": "g", "from": "x"}):
        try:
            acc.settlement(bad)
        except ValueError as exc:
            assert "not a ledger settlement" in str(exc)
        else:
            raise AssertionError(f"accepted {bad}")
