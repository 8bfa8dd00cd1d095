"""The deployment document: IoT Edge's modules shape, validated whole, refusals naming a path."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import DataError
from gateway.modules.deployment import (
    ALWAYS,
    DEFAULT_STARTUP_ORDER,
    RUNNING,
    Deployment,
    DeploymentError,
    deployment_to_bytes,
    parse_deployment,
)


def _doc(**modules) -> dict:
    return {"version": 1, "modules": modules}


def _module(**over) -> dict:
    m = {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
         "startupOrder": 1, "settings": {"command": ["python3", "-c", "pass"]},
         "env": {"A": {"value": "1"}}}
    m.update(over)
    return m


def _refusal(doc: object) -> str:
    with pytest.raises(DeploymentError) as info:
        parse_deployment(json.dumps(doc).encode())
    return info.value.message


def test_a_whole_document_is_read():
    d = parse_deployment(json.dumps(_doc(filter=_module(
        settings={"command": ["/bin/filter", "-v"], "user": "filt"},
        env={"B": {"value": "2"}, "A": {"value": "1"}}))).encode())
    m = d.modules["filter"]
    assert d.version == 1
    assert m.command == ("/bin/filter", "-v") and m.user == "filt"
    assert m.env == (("A", "1"), ("B", "2"))
    assert (m.status, m.restart_policy, m.startup_order, m.version) == (
        "running", "always", 1, "1.0")


def test_iot_edge_defaults_apply():
    d = parse_deployment(json.dumps(_doc(m={"type": "process",
                                            "settings": {"command": ["x"]}})).encode())
    m = d.modules["m"]
    assert (m.status, m.restart_policy, m.startup_order, m.version, m.user, m.env) == (
        RUNNING, ALWAYS, DEFAULT_STARTUP_ORDER, "", None, ())


def test_unknown_fields_are_ignored():
    doc = _doc(m=_module(imagePullPolicy="on-create", settings={"command": ["x"], "new": 1}))
    doc["schemaVersion"] = "1.1"
    assert parse_deployment(json.dumps(doc).encode()).modules["m"].command == ("x",)


def test_the_canonical_form_reads_back_equal():
    d = parse_deployment(json.dumps(_doc(b=_module(), a=_module(
        settings={"command": ["y"], "user": "u"}, startupOrder=0))).encode())
    again = parse_deployment(deployment_to_bytes(d))
    assert again == d
    assert deployment_to_bytes(again) == deployment_to_bytes(d)


def test_startup_order_then_name():
    d = parse_deployment(json.dumps(_doc(c=_module(startupOrder=0), b=_module(startupOrder=2),
                                         a=_module(startupOrder=2))).encode())
    assert [m.name for m in d.in_startup_order()] == ["c", "a", "b"]


def test_a_spec_change_is_what_restarts():
    a = parse_deployment(json.dumps(_doc(m=_module())).encode()).modules["m"]
    b = parse_deployment(json.dumps(_doc(m=_module(status="stopped", startupOrder=9,
                                                   restartPolicy="never"))).encode()).modules["m"]
    c = parse_deployment(json.dumps(_doc(m=_module(version="2.0"))).encode()).modules["m"]
    assert a.spec() == b.spec()
    assert a.spec() != c.spec()


@pytest.mark.parametrize("doc, path", [
    (_doc(filter=_module(settings={"command": []})), "modules.filter.settings.command:"),
    (_doc(filter=_module(settings={"command": ["a", 1]})), "modules.filter.settings.command:"),
    (_doc(filter=_module(settings={"command": "a b"})), "modules.filter.settings.command:"),
    (_doc(filter=_module(settings=None)), "modules.filter.settings:"),
    (_doc(filter=_module(settings={"command": ["a"], "user": "root"})),
     "modules.filter.settings.user:"),
    (_doc(filter=_module(type="docker")), "modules.filter.type:"),
    (_doc(filter=_module(status="paused")), "modules.filter.status:"),
    (_doc(filter=_module(restartPolicy="sometimes")), "modules.filter.restartPolicy:"),
    (_doc(filter=_module(startupOrder=-1)), "modules.filter.startupOrder:"),
    (_doc(filter=_module(startupOrder=True)), "modules.filter.startupOrder:"),
    (_doc(filter=_module(version=2)), "modules.filter.version:"),
    (_doc(filter=_module(env={"A": "1"})), "modules.filter.env.A:"),
    (_doc(filter=_module(env={"1A": {"value": "x"}})), "modules.filter.env:"),
    (_doc(**{"$edgeAgent": _module()}), "modules.$edgeAgent:"),
    (_doc(**{"a/b": _module()}), "modules.a/b:"),
    (_doc(**{"x" * 65: _module()}), "modules." + "x" * 65),
    ({"modules": {}}, "version:"),
    ({"version": -1, "modules": {}}, "version:"),
    ({"version": 1, "modules": []}, "modules:"),
    ([], "expected a JSON object"),
])
def test_one_bad_field_refuses_the_document_naming_its_path(doc, path):
    assert _refusal(doc).startswith(path)


def test_on_unhealthy_is_refused_with_what_to_use_instead():
    reason = _refusal(_doc(m=_module(restartPolicy="on-unhealthy")))
    assert reason.startswith("modules.m.restartPolicy:") and "on-failure" in reason


def test_one_bad_module_refuses_the_good_ones_too():
    reason = _refusal(_doc(good=_module(), bad=_module(type="docker")))
    assert reason.startswith("modules.bad.type")


def test_the_error_is_a_data_error():
    assert issubclass(DeploymentError, DataError)
    assert DeploymentError("x").exit_code == DataError("x").exit_code


def test_not_json_is_refused():
    with pytest.raises(DeploymentError, match="not valid JSON"):
        parse_deployment(b"\xff{")


def test_empty_is_older_than_any_document():
    assert Deployment.empty().version < parse_deployment(b'{"version":0}').version


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=12)
_fields = st.fixed_dictionaries({}, optional={
    "version": _json | st.text(max_size=3), "type": st.just("process") | _json,
    "status": st.sampled_from(["running", "stopped"]) | _json,
    "restartPolicy": st.sampled_from(["never", "on-failure", "always"]) | _json,
    "startupOrder": st.integers(-2, 2**33) | _json,
    "settings": st.fixed_dictionaries({}, optional={
        "command": st.lists(st.text(max_size=4), max_size=3) | _json,
        "user": st.sampled_from(["u", "root", "Bad"]) | _json}) | _json,
    "env": st.dictionaries(st.text(max_size=4), st.fixed_dictionaries(
        {}, optional={"value": st.text(max_size=3) | _json}) | _json, max_size=2) | _json,
})


@given(st.fixed_dictionaries({"version": st.integers(-1, 3) | _json}, optional={
    "modules": st.dictionaries(st.text(max_size=6), _fields | _json, max_size=3) | _json}))
def test_any_document_is_read_or_refused_naming_a_path(doc):
    try:
        d = parse_deployment(json.dumps(doc).encode())
    except DeploymentError as exc:
        assert exc.message.split(":")[0] in {"version", "modules"} or exc.message.startswith(
            ("modules.", "expected a JSON object"))
    else:
        assert parse_deployment(deployment_to_bytes(d)) == d


@given(st.binary(max_size=64))
def test_any_bytes_are_read_or_refused(data):
    try:
        parse_deployment(data)
    except DeploymentError as exc:
        assert exc.message
