"""The operator's document edits: checked before anything is written, versions always go up."""

from __future__ import annotations

import json

import pytest

from gateway.child.auth import parse_registry
from gateway.operator import (
    OperatorError,
    add_children,
    change_children,
    check_new_children,
    connection_string,
    merge_desired,
    set_ttl,
)


def test_add_then_change_keeps_a_registry_the_gateway_accepts():
    doc, keys = add_children({"version": 4, "children": []}, ["a", "b"], None)
    assert doc["version"] == 5 and set(keys) == {"a", "b"}
    doc = change_children(doc, ["b"], "disable")
    registry = parse_registry(json.dumps(doc).encode())
    assert registry.version == 6 and not registry.children["b"].enabled
    doc = change_children(doc, ["a"], "remove")
    assert [c["deviceId"] for c in doc["children"]] == ["b"]


def test_x509_children_and_bad_thumbprints():
    doc, keys = add_children({"version": 0, "children": []}, ["cam"], "AB:" * 19 + "AB")
    assert keys == {} and doc["children"][0]["auth"]["primaryThumbprint"] == "ab" * 20
    with pytest.raises(OperatorError, match="x509-thumbprint"):
        add_children({"version": 0, "children": []}, ["cam"], "xyz")


def test_parent_and_gateway_rules():
    registries = {"gw1": {"children": [{"deviceId": "a"}]}, "gw2": {"children": []}}
    check_new_children("gw2", ["b"], registries, {"gw1", "gw2"})
    with pytest.raises(OperatorError, match="already has a parent, gw1"):
        check_new_children("gw2", ["a"], registries, {"gw1", "gw2"})
    with pytest.raises(OperatorError, match="is a gateway"):
        check_new_children("gw2", ["gw1"], registries, {"gw1", "gw2"})
    with pytest.raises(OperatorError, match="named twice"):
        check_new_children("gw2", ["b", "b"], registries, set())


def test_desired_merge_and_ttl():
    assert merge_desired(None, {"a": 1}) == {"a": 1, "$version": 1}
    assert merge_desired({"$version": 7, "a": 1, "b": 2}, {"a": None, "$version": 99}) == {
        "b": 2, "$version": 8}
    doc = set_ttl({"$version": 3, "routes": {"r": "x"}}, 60)
    assert doc == {"$version": 4, "routes": {"r": "x"}, "schemaVersion": "1.0",
                   "storeAndForwardConfiguration": {"timeToLiveSecs": 60}}
    for bad in (0, 2147483648):
        with pytest.raises(OperatorError, match="--ttl"):
            set_ttl(None, bad)


def test_connection_string_names_the_gateway():
    assert connection_string("hub", "d", "k", "10.0.0.2") == (
        "HostName=hub;DeviceId=d;SharedAccessKey=k;GatewayHostName=10.0.0.2")


def _deployment(**over) -> bytes:
    doc = {"modules": {"filter": {"type": "process", "settings": {"command": ["/bin/f"]}}}}
    doc.update(over)
    return json.dumps(doc).encode()


def test_deploy_takes_the_next_version_when_the_file_has_none():
    from gateway.operator import deployment_document
    assert deployment_document(_deployment(), "d.json", None)["version"] == 0
    assert deployment_document(_deployment(), "d.json", {"version": 7})["version"] == 8
    assert deployment_document(_deployment(version=9), "d.json", {"version": 7})["version"] == 9


def test_deploy_refuses_a_bad_file_or_an_old_version_naming_the_file():
    from gateway.modules.deployment import DeploymentError
    from gateway.operator import deployment_document
    bad = json.dumps({"modules": {"filter": {"type": "process", "settings": {"command": []}}}})
    with pytest.raises(DeploymentError, match=r"^d.json: refused, nothing published: "
                                              r"modules.filter.settings.command"):
        deployment_document(bad.encode(), "d.json", None)
    with pytest.raises(DeploymentError, match="d.json: not valid JSON"):
        deployment_document(b"{", "d.json", None)
    with pytest.raises(OperatorError, match="not newer than version 7"):
        deployment_document(_deployment(version=7), "d.json", {"version": 7})
