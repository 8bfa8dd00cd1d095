"""Topic names and filters: validation and MQTT 3.1.1 matching (section 4.7)."""

from __future__ import annotations

import pytest

from gateway.mqtt.topics import matches, validate_filter, validate_topic


@pytest.mark.parametrize(
    "f",
    ["#", "+", "a", "a/b/c", "a/+/c", "a/#", "+/+", "/+", "+/", "/", "//", "a//b", "$SYS/#", "+/#"],
)
def test_valid_filters(f: str) -> None:
    validate_filter(f)


@pytest.mark.parametrize(
    ("f", "words"),
    [
        ("", "empty"),
        ("a/#/b", "last level"),
        ("a#", "whole level"),
        ("a/b#", "whole level"),
        ("#/", "last level"),
        ("a+", "'+' must occupy a whole level"),
        ("a/+b/c", "'+' must occupy a whole level"),
        ("a/\x00", "U+0000"),
    ],
)
def test_invalid_filters(f: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_filter(f)
    assert words in str(info.value)


def test_filter_too_long() -> None:
    validate_filter("a" * 65535)
    with pytest.raises(ValueError, match="longer than 65535"):
        validate_filter("a" * 65536)
    with pytest.raises(ValueError, match="longer than 65535"):
        validate_filter("é" * 40000)  # 80000 bytes of UTF-8


@pytest.mark.parametrize(
    ("name", "words"),
    [("", "empty"), ("a/+", "wildcard '+'"), ("a/#", "wildcard '#'"), ("a\x00", "U+0000")],
)
def test_invalid_topic_names(name: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_topic(name)
    assert words in str(info.value)


def test_valid_topic_names() -> None:
    for name in ["a", "/", "a//b", "$SYS/x", "devices/d1/messages/events/k=v", "é/ü"]:
        validate_topic(name)


@pytest.mark.parametrize(
    ("f", "topic", "expected"),
    [
        # Exact.
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/b", "a/b/c", False),
        ("a/b", "A/b", False),
        # '#' (spec 4.7.1.2 examples).
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("sport/tennis/#", "sport", False),
        ("sport/tennis/#", "sport/tennis", True),
        ("#", "a/b/c", True),
        ("#", "/", True),
        # '+' (spec 4.7.1.3 examples).
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player2", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("+", "a", True),
        ("a/+/c", "a//c", True),
        ("+/tennis/#", "sport/tennis/player1", True),
        ("+/#", "a", True),
        # '$' topics (4.7.2).
        ("#", "$SYS/monitor/Clients", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        ("$iothub/#", "$iothub/twin/res/200", True),
        ("a/#", "a/$b", True),
        ("a/+", "a/$b", True),
    ],
)
def test_matches(f: str, topic: str, expected: bool) -> None:
    assert matches(f, topic) is expected
