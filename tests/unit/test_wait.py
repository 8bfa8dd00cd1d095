"""The tests' deadline helper: it returns what satisfied the condition, and a timeout names what
was awaited and the last value seen."""

from __future__ import annotations

import pytest

from tests.support.wait import wait_until


def test_returns_the_first_value_that_satisfies_the_predicate():
    values = iter([1, 2, 7, 9])
    assert wait_until(lambda: next(values), lambda v: v > 5, interval=0) == 7


def test_a_timeout_names_what_and_the_last_value():
    with pytest.raises(AssertionError, match=r"waiting for the answer; last: 41"):
        wait_until(lambda: 41, lambda v: v == 42, timeout=0, what="the answer")


def test_show_shapes_the_last_value_in_the_message():
    with pytest.raises(AssertionError, match=r"last: tail$"):
        wait_until(lambda: "a long journal tail", lambda v: "error" in v, timeout=0,
                   show=lambda v: v.split()[-1])
