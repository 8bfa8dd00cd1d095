"""The device dialect's classification, including gatewayd's child-to-child method extension."""

from __future__ import annotations

import pytest

from gateway.child import dialect


@pytest.mark.parametrize("topic, expected", [
    ("devices/d/messages/events/a=1", dialect.Telemetry("a=1")),
    ("$iothub/twin/GET/?$rid=7", dialect.TwinGet("7")),
    ("$iothub/twin/PATCH/properties/reported/?$rid=8", dialect.TwinReportedPatch("8")),
    ("$iothub/methods/res/200/?$rid=9", dialect.MethodResponse(200, "9")),
    ("$iothub/methods/invoke/valve/open/?$rid=a1",
     dialect.MethodInvoke("valve", "open", "a1", None)),
    ("$iothub/methods/invoke/valve/open/?$rid=a1&timeout=2.5",
     dialect.MethodInvoke("valve", "open", "a1", 2.5)),
])
def test_classify(topic, expected):
    assert dialect.classify_publish("d", topic) == expected


@pytest.mark.parametrize("topic, reason", [
    ("$iothub/methods/invoke/valve/?$rid=1", "must be"),
    ("$iothub/methods/invoke/valve/open/extra/?$rid=1", "must be"),
    ("$iothub/methods/invoke/valve/open/", "no '?\\$rid"),
    ("$iothub/methods/invoke/valve/open/?$rid=1&timeout=soon", "not a number"),
    ("$iothub/methods/invoke/res/200/?$rid=1", "not part of"),
    ("devices/other/messages/events/", "may only publish"),
])
def test_refusals_say_why(topic, reason):
    with pytest.raises(dialect.TopicRefused, match=reason):
        dialect.classify_publish("d", topic)


def test_children_may_subscribe_to_call_answers():
    dialect.check_subscription("d", "$iothub/methods/invoke/res/#")
    with pytest.raises(dialect.TopicRefused):
        dialect.check_subscription("d", "$iothub/methods/invoke/#")
