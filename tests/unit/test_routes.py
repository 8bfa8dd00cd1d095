"""The route language: parsing with precise refusals, three-valued conditions, sink selection."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.hub.routes import MessageView, RouteError, Sink, parse_route, parse_routes

JSON_CT = "%24.ct=application%2Fjson&%24.ce=utf-8"


def view(device="s1", props="", body=b"{}") -> MessageView:
    return MessageView(device, props, body)


def matches(condition: str, msg: MessageView) -> bool:
    return parse_route("r", f"FROM /messages/* WHERE {condition} INTO $upstream").matches(msg)


@pytest.mark.parametrize("condition, expected", [
    ("$connectionDeviceId = 's1'", True),
    ("$connectionDeviceId <> 's1'", False),
    ("alert = 'high'", True),
    ("alert = \"high\"", True),
    ("level > 3", True),
    ("level >= 5", True),
    ("level < 5", False),
    ("level <= 5 AND alert = 'high'", True),
    ("level > 9 OR alert = 'high'", True),
    ("NOT (level > 9)", True),
    ("missing = 'x'", False),
    ("NOT (missing = 'x')", False),  # undefined stays undefined
    ("missing = 'x' OR level = 5", True),
    ("IS_DEFINED(alert) AND NOT IS_DEFINED(missing)", True),
    ("$contentType = 'application/json'", True),
    ("$body.temp > 30", True),
    ("$body.site.name = 'north'", True),
    ("$body.site.missing = 1", False),
    ("$body.ok = true", True),
    ("alert = 5", False),  # 'high' is no number: undefined
])
def test_conditions(condition, expected):
    body = json.dumps({"temp": 31.5, "site": {"name": "north"}, "ok": True}).encode()
    msg = view(props=f"alert=high&level=5&{JSON_CT}", body=body)
    assert matches(condition, msg) is expected


def test_body_needs_a_json_content_type():
    assert not matches("$body.temp > 30", view(body=b'{"temp": 40}'))
    assert not matches("$body.temp > 30", view(props=JSON_CT, body=b"not json"))


@pytest.mark.parametrize("route, fragment", [
    ("FROM /messages/* INTO", "expected FROM"),
    ("FROM /twin/* INTO $upstream", "unknown source"),
    ("FROM /messages/* WHERE level > INTO $upstream", "column 31: expected a property"),
    ("FROM /messages/* WHERE level >> 3 INTO $upstream", "column 31"),
    ("FROM /messages/* WHERE (a = 1 INTO $upstream", "expected )"),
    ("FROM /messages/* WHERE a = 'x' INTO $downstream", "unknown sink"),
    ("FROM /messages/* WHERE a ~ 1 INTO $upstream", "unexpected"),
    ('FROM /messages/* INTO BrokeredEndpoint("/modules/x/outputs/y")', "unknown sink"),
])
def test_refusals_name_the_route_and_column(route, fragment):
    with pytest.raises(RouteError, match="route 'bad'") as info:
        parse_route("bad", route)
    assert fragment in str(info.value)


@pytest.mark.parametrize("spec, fragment", [
    ({"route": "FROM /messages/* INTO $upstream", "priority": 10}, "priority"),
    ({"route": "FROM /messages/* INTO $upstream", "priority": True}, "priority"),
    ({"route": "FROM /messages/* INTO $upstream", "timeToLiveSecs": 0}, "timeToLiveSecs"),
    ({"route": "FROM /messages/* INTO $upstream", "colour": "red"}, "unknown field"),
    ({"priority": 1}, "route string"),
    (42, "route string"),
])
def test_route_objects_are_checked(spec, fragment):
    with pytest.raises(RouteError, match=fragment):
        parse_route("bad", spec)


def test_sinks_each_once_highest_priority_then_longest_ttl():
    table = parse_routes({
        "all": "FROM /messages/* INTO $upstream",
        "alerts": {"route": "FROM /messages/* WHERE alert = 'high' INTO $upstream",
                   "priority": 0, "timeToLiveSecs": 60},
        "alerts-long": {"route": "FROM /messages/* WHERE alert = 'high' INTO $upstream",
                        "priority": 0, "timeToLiveSecs": 600},
        "to-b": "FROM /messages/devices/a/* INTO "
                'BrokeredEndpoint("/devices/b/messages/devicebound")',
    })
    got = {d.sink: (d.priority, d.ttl_secs) for d in
           table.deliveries(view("a", "alert=high"), default_ttl=7200)}
    assert got == {Sink(): (0, 600), Sink("b"): (9, 7200)}
    got = {d.sink: (d.priority, d.ttl_secs) for d in table.deliveries(view("c"), 7200)}
    assert got == {Sink(): (9, 7200)}
    assert table.allows_call("a", "b") and not table.allows_call("c", "b")


def test_no_routes_means_everything_upstream_and_no_loops():
    assert [(d.sink, d.priority) for d in parse_routes({}).deliveries(view(), 10)] == [
        (Sink(), 9)]
    loop = parse_routes({"x": 'FROM /messages/* INTO BrokeredEndpoint("/devices/s1/messages/'
                              'devicebound")'})
    assert loop.deliveries(view("s1"), 10) == [], "a child's own messages never come back"


def test_the_whole_table_is_refused_for_one_bad_route():
    with pytest.raises(RouteError, match="route 'two'"):
        parse_routes({"one": "FROM /messages/* INTO $upstream", "two": "FROM nowhere"})
    with pytest.raises(RouteError, match="object"):
        parse_routes(["FROM /messages/* INTO $upstream"])


@pytest.mark.parametrize("literal", ['"\x1f"', '"\\x"', '"\\u12"', '"\n"'])
def test_a_double_quoted_string_json_cannot_read_is_a_route_error(literal):
    """Found by the fuzz test below: json.loads' own error escaped the parser."""
    with pytest.raises(RouteError, match="bad string"):
        parse_route("r", f"FROM /messages/* WHERE $body.x = {literal} INTO $upstream")


@given(st.text(max_size=60))
def test_any_text_parses_or_is_refused_cleanly(text):
    """Only RouteError may come out: anything else would take the settings thread down."""
    with contextlib.suppress(RouteError):
        parse_route("fuzz", f"FROM /messages/* WHERE {text} INTO $upstream")


# -- modules: sources as the IoT Edge hub names them, and module inputs as sinks ---------------

SENDERS = {
    "producer": view("edge-1/producer", "%24.on=out1&kind=temp"),
    "producer-plain": view("edge-1/producer", "kind=temp"),
    "producer2": view("edge-1/producer2", "%24.on=out1"),
    "child": view("s1", "kind=temp"),
}
PRODUCER = SENDERS["producer"]
CHILD = SENDERS["child"]
ALL = set(SENDERS)
MODULES = ALL - {"child"}


@pytest.mark.parametrize("source, takes", [
    ("/*", ALL),
    ("/messages/*", ALL),
    ("/messages/modules/*", MODULES),
    ("/messages/modules/producer", {"producer", "producer-plain"}),
    ("/messages/modules/producer/*", {"producer", "producer-plain"}),
    ("/messages/modules/producer/outputs/*", {"producer"}),
    ("/messages/modules/producer/outputs/out1", {"producer"}),
    ("/messages/modules/producer/outputs/out2", set()),
    ("/messages/devices/s1/*", {"child"}),
])
def test_module_sources_match_by_level_prefix(source, takes):
    route = parse_route("r", f"FROM {source} INTO $upstream")
    assert {name for name, msg in SENDERS.items() if route.matches(msg)} == takes


def test_connection_module_id_in_conditions():
    assert matches("$connectionModuleId = 'producer'", PRODUCER)
    assert matches("$connectionDeviceId = 'edge-1'", PRODUCER)
    assert not matches("IS_DEFINED($connectionModuleId)", CHILD)
    assert matches("NOT IS_DEFINED($connectionModuleId)", CHILD)


def test_a_module_input_is_a_sink():
    route = parse_route("r", 'FROM /messages/modules/producer/outputs/out1 INTO '
                             'BrokeredEndpoint("/modules/consumer/inputs/in1")')
    assert route.sink == Sink(module="consumer", input="in1")
    assert str(route.sink) == 'BrokeredEndpoint("/modules/consumer/inputs/in1")'
    assert not route.sink.upstream


@pytest.mark.parametrize("source", ["/messages/modules/a/b", "/messages/modules/*/outputs/o",
                                    "/messages/devices/*", "messages/*", "/telemetry/*"])
def test_unknown_module_sources_are_refused_with_the_shapes(source):
    with pytest.raises(RouteError, match="/messages/modules/<m>/outputs/<o>"):
        parse_route("r", f"FROM {source} INTO $upstream")
