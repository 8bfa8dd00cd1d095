"""Offline authentication: registry parsing, SAS tokens (ours and the Azure SDK's), X.509."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import textwrap
import time

import pytest

from gateway.child import certs
from gateway.child.auth import (
    Audience,
    Child,
    Registry,
    authenticate,
    make_sas_token,
    parse_registry,
    registry_to_bytes,
)
from gateway.errors import RegistryError

HUB = "myhub.azure-devices.net"
PRIMARY = base64.b64encode(bytes(range(32))).decode()
SECONDARY = base64.b64encode(b"secondary key for rollover......").decode()
OTHER = base64.b64encode(b"some other device's key.........").decode()
NOW = 1_700_000_000.0
LATER = int(NOW) + 3600

_KEY, CERT = certs.make_client_cert(None, None, "x1", days=30)
CERT_DER = certs.der(CERT)
_KEY2, OTHER_CERT = certs.make_client_cert(None, None, "x1", days=30)


def document(*children: dict, version: int = 7) -> bytes:
    return json.dumps({"version": version, "children": list(children)}).encode()


def sas_child(device_id: str, status: str = "enabled", **auth) -> dict:
    keys = {"primaryKey": PRIMARY, "secondaryKey": SECONDARY, **auth}
    return {"deviceId": device_id, "status": status, "auth": {"type": "sas", **keys}}


def x509_child(device_id: str, primary: str, secondary: str | None = None) -> dict:
    auth = {"type": "x509", "primaryThumbprint": primary}
    if secondary is not None:
        auth["secondaryThumbprint"] = secondary
    return {"deviceId": device_id, "status": "enabled", "auth": auth}


REGISTRY = parse_registry(
    document(
        sas_child("s1"),
        sas_child("s.2-x"),
        sas_child("off", status="disabled"),
        x509_child("x1", certs.thumbprint(CERT_DER, "sha1")),
        x509_child("x2", "00" * 32, certs.thumbprint(CERT_DER, "sha256").upper()),
    )
)


def user(device_id: str, hub: str = HUB) -> str:
    return f"{hub}/{device_id}/?api-version=2021-04-12"


def sas(device_id: str = "s1", *, password: str | bytes | None = None, key: str = PRIMARY,
        expiry: int = LATER, client_id: str | None = None, username: str | None = None):
    if password is None:
        password = make_sas_token(HUB, device_id, key, expiry)
    if isinstance(password, str):
        password = password.encode()
    return authenticate(
        REGISTRY,
        HUB,
        client_id if client_id is not None else device_id,
        username if username is not None else user(device_id),
        password,
        None,
        NOW,
    )


def x509(device_id: str, cert_der: bytes | None):
    return authenticate(REGISTRY, HUB, device_id, user(device_id), None, cert_der, NOW)


def refused(result, code: int, *words: str) -> None:
    assert not result.ok
    assert result.return_code == code, result.reason
    assert "\n" not in result.reason
    for word in words:
        assert word in result.reason, result.reason
    for secret in (PRIMARY, SECONDARY):
        assert secret not in result.reason


# -- SAS --------------------------------------------------------------------------------------


def test_token_format_is_the_sdks():
    token = make_sas_token(HUB, "s1", PRIMARY, 1700000000)
    assert token.startswith(f"SharedAccessSignature sr={HUB}%2Fdevices%2Fs1&sig=")
    assert token.endswith("&se=1700000000")
    assert "+" not in token and "/" not in token.split("sig=")[1]


def test_primary_and_secondary_keys_are_accepted():
    for key in (PRIMARY, SECONDARY):
        result = sas(key=key)
        assert (result.ok, result.return_code, result.method) == (True, 0, "sas")


def test_usernames_the_hub_accepts():
    for username in (
        f"{HUB}/s1/?api-version=2021-04-12&DeviceClientType=azure-iot-device-python%2F2.14.0",
        f"{HUB}/s1",
        f"{HUB}/s1/",
        f"{HUB.upper()}/s1/?api-version=2018-06-30",
    ):
        assert sas(username=username).ok, username


def test_device_ids_with_punctuation():
    assert sas("s.2-x").ok


def test_hub_host_in_token_is_case_insensitive():
    token = make_sas_token(HUB.upper(), "s1", PRIMARY, LATER)
    assert sas(password=token).ok


def test_fields_in_any_order_and_skn():
    token = make_sas_token(HUB, "s1", PRIMARY, LATER)
    fields = dict(f.split("=", 1) for f in token.removeprefix("SharedAccessSignature ").split("&"))
    reordered = f"SharedAccessSignature se={fields['se']}&skn=device&sig={fields['sig']}"
    assert sas(password=reordered + f"&sr={fields['sr']}").ok


def test_unencoded_plus_in_signature_is_tolerated():
    token = make_sas_token(HUB, "s1", PRIMARY, LATER)
    sig = token.split("sig=")[1].split("&")[0]
    raw = token.replace(sig, sig.replace("%2B", "+").replace("%2F", "/").replace("%3D", "="))
    assert sas(password=raw).ok


def test_unknown_device():
    refused(sas("ghost"), 5, "unknown device 'ghost'", "not a child of this gateway")


def test_disabled_device():
    refused(sas("off"), 5, "disabled")


def test_client_id_must_match_username():
    refused(
        sas(client_id="s2"),
        5,
        "client id 's2' does not match 's1' in username",
    )


def test_wrong_hub_in_username():
    refused(sas(username=user("s1", "otherhub.azure-devices.net")), 4, "otherhub")


@pytest.mark.parametrize(
    "username", ["", "s1", f"{HUB}/s1//?api-version=1", f"{HUB}//?api-version=1",
                 f"{HUB}/a/b/c/?api-version=1"]
)
def test_malformed_usernames(username):
    result = authenticate(REGISTRY, HUB, "s1", username or None, b"x", None, NOW)
    refused(result, 4)


def test_token_for_another_device_or_hub():
    refused(sas(password=make_sas_token(HUB, "s.2-x", PRIMARY, LATER)), 4, "resource", "s.2-x")
    refused(sas(password=make_sas_token("other.net", "s1", PRIMARY, LATER)), 4, "other.net")
    module = make_sas_token(HUB, "s1/m1", PRIMARY, LATER)
    refused(sas(password=module), 4, "module")


def test_bad_signature():
    refused(sas(key=OTHER), 4, "signature does not match")
    token = make_sas_token(HUB, "s1", PRIMARY, LATER)
    refused(sas(password=token.replace(f"se={LATER}", f"se={LATER + 1}")), 4, "signature")
    sig = token.split("sig=")[1].split("&")[0]
    refused(sas(password=token.replace(sig, "not*base64")), 4, "not base64")


def test_expired_token():
    result = sas(expiry=int(NOW) - 1)
    refused(result, 4, "SAS token expired at 2023-11-14T22:13:19Z", "local clock 2023-11-14T22")
    assert sas(expiry=int(NOW)).ok


@pytest.mark.parametrize(
    "password",
    [
        "hunter2",
        "SharedAccessSignature sr=a&sig=b",
        f"SharedAccessSignature sr={HUB}%2Fdevices%2Fs1&sig=AAAA&se=soon",
        f"SharedAccessSignature sr={HUB}%2Fdevices%2Fs1&sig=AAAA&se=1&se=2",
        f"SharedAccessSignature sr={HUB}%2Fdevices%2Fs1&sig=AAAA&se=1&foo=2",
        b"\xff\xfe",
    ],
)
def test_malformed_tokens(password):
    refused(sas(password=password), 4)


def test_sas_device_without_password():
    result = authenticate(REGISTRY, HUB, "s1", user("s1"), None, None, NOW)
    refused(result, 4, "no password")


def test_reasons_never_hold_the_signature():
    token = make_sas_token(HUB, "s1", OTHER, LATER)
    sig = token.split("sig=")[1].split("&")[0]
    result = sas(password=token)
    assert sig not in result.reason and "sig=" not in result.reason


# -- the real Azure SDK -----------------------------------------------------------------------

SDK_SCRIPT = textwrap.dedent(
    """
    import sys
    from azure.iot.device import IoTHubDeviceClient

    hub, device, key = sys.argv[1:4]
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=hub, device_id=device
    )
    # The token the SDK would send as the MQTT password; nothing connects.
    print(str(client._mqtt_pipeline.pipeline_configuration.sastoken))
    client.shutdown()
    """
)


@pytest.mark.skipif(
    not os.environ.get("GATEWAYD_SDK_PYTHON"),
    reason="set GATEWAYD_SDK_PYTHON to a python with azure-iot-device installed",
)
@pytest.mark.parametrize("device_id", ["s1", "s.2-x"])
def test_token_from_the_azure_sdk_is_accepted(device_id):
    python = os.environ["GATEWAYD_SDK_PYTHON"]
    out = subprocess.run(
        [python, "-c", SDK_SCRIPT, HUB, device_id, SECONDARY],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = out.stdout.strip().splitlines()[-1]
    expiry = int(token.rsplit("se=", 1)[1])
    assert make_sas_token(HUB, device_id, SECONDARY, expiry) == token
    result = authenticate(
        REGISTRY,
        HUB,
        device_id,
        user(device_id) + "&DeviceClientType=azure-iot-device-python%2F2.14.0",
        token.encode(),
        None,
        time.time(),
    )
    assert result.ok, result.reason


# -- X.509 ------------------------------------------------------------------------------------


def test_x509_sha1_thumbprint():
    result = x509("x1", CERT_DER)
    assert (result.ok, result.method) == (True, "x509")


def test_x509_sha256_thumbprint_as_secondary_uppercase():
    assert x509("x2", CERT_DER).ok


def test_x509_wrong_certificate():
    refused(x509("x1", certs.der(OTHER_CERT)), 5, "matches neither thumbprint")


def test_x509_missing_certificate():
    refused(x509("x1", None), 4, "no client certificate")


def test_x509_device_cannot_use_a_sas_token():
    token = make_sas_token(HUB, "x1", PRIMARY, LATER)
    result = authenticate(REGISTRY, HUB, "x1", user("x1"), token.encode(), None, NOW)
    refused(result, 4, "no client certificate")


# -- registry documents -----------------------------------------------------------------------


def test_registry_contents():
    child = REGISTRY.children["s1"]
    assert child.enabled and child.auth_type == "sas"
    assert child.keys == (bytes(range(32)), base64.b64decode(SECONDARY))
    assert REGISTRY.children["off"].enabled is False
    assert REGISTRY.children["x2"].thumbprints == (
        "00" * 32,
        certs.thumbprint(CERT_DER, "sha256"),
    )
    assert REGISTRY.version == 7


def test_registry_round_trips_canonically():
    data = registry_to_bytes(REGISTRY)
    again = parse_registry(data)
    assert again == REGISTRY
    assert registry_to_bytes(again) == data


def test_empty_registry_admits_nobody():
    empty = Registry.empty()
    assert empty.version == -1 and len(empty.children) == 0
    token = make_sas_token(HUB, "s1", PRIMARY, LATER)
    refused(authenticate(empty, HUB, "s1", user("s1"), token.encode(), None, NOW), 5, "unknown")


def test_thumbprint_spellings_and_optional_secondary():
    spaced = ":".join(f"{b:02X}" for b in bytes.fromhex("ab" * 20))
    reg = parse_registry(document(x509_child("x", spaced), sas_child("s", secondaryKey=None)))
    assert reg.children["x"].thumbprints == ("ab" * 20,)
    assert len(reg.children["s"].keys) == 1


def test_unknown_fields_are_ignored():
    reg = parse_registry(
        json.dumps({"version": 0, "children": [], "etag": "x", "generatedBy": "cloud"}).encode()
    )
    assert reg.version == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "expected a JSON object, got a list"),
        (b'{"children": []}', "version: expected a non-negative integer, got null"),
        (document(version=-1), "version: expected a non-negative integer, got -1"),
        (b'{"version": true, "children": []}', "version: expected a non-negative integer"),
        (b'{"version": 1.0, "children": []}', "version: expected a non-negative integer"),
        (b'{"version": 1}', "children: expected a list, got null"),
        (document("s1"), "children[0]: expected an object, got a string"),
        (document(sas_child("s1"), sas_child("s1")), "children[1].deviceId: duplicate deviceId"),
        (document(sas_child("")), "children[0].deviceId: expected an IoT Hub device id"),
        (document(sas_child("a/b")), "children[0].deviceId: expected an IoT Hub device id"),
        (document(sas_child("s1", status="on")), 'children[0].status: unknown status "on"'),
        (
            document(*(sas_child(d) for d in "abc"), sas_child("d", primaryKey="@")),
            "children[3].auth.primaryKey: not valid base64",
        ),
        (document(sas_child("s1", primaryKey="")), "children[0].auth.primaryKey: empty key"),
        (document(sas_child("s1", primaryKey=None)), "children[0].auth.primaryKey: required"),
        (document(sas_child("s1", secondaryKey=5)), "children[0].auth.secondaryKey: expected a"),
        (
            document({"deviceId": "s1", "status": "enabled", "auth": {"type": "token"}}),
            'children[0].auth.type: unknown type "token"',
        ),
        (
            document({"deviceId": "s1", "status": "enabled"}),
            "children[0].auth: expected an object",
        ),
        (document(x509_child("x", "abc")), "children[0].auth.primaryThumbprint: expected 40"),
        (document(x509_child("x", "g" * 40)), "children[0].auth.primaryThumbprint: expected 40"),
    ],
)
def test_registry_errors_say_what_is_wrong(data, message):
    with pytest.raises(RegistryError) as info:
        parse_registry(data)
    assert message in info.value.message


def test_method_callers_round_trip_and_are_checked():
    child = {"deviceId": "v", "status": "enabled", "auth": {"type": "sas", "primaryKey": PRIMARY},
             "methodCallers": ["b", "a", "a"]}
    registry = parse_registry(json.dumps({"version": 1, "children": [child]}).encode())
    assert registry.children["v"].method_callers == ("a", "b")
    assert parse_registry(registry_to_bytes(registry)) == registry
    child["methodCallers"] = "a"
    with pytest.raises(RegistryError, match="methodCallers"):
        parse_registry(json.dumps({"version": 1, "children": [child]}).encode())


# -- modules of the gateway -------------------------------------------------------------------

GW = "edge-1"
FILTER_KEY = base64.b64encode(b"the filter module's own key.....").decode()
MODULES = {
    "edge-1/filter": Child("edge-1/filter", True, "sas", (base64.b64decode(FILTER_KEY),), ()),
    "edge-1/parked": Child("edge-1/parked", False, "sas", (base64.b64decode(FILTER_KEY),), ()),
}
AUDIENCE = Audience(HUB, GW, ("edge-1.local",), MODULES)


def module_sas(module: str = "filter", *, host: str = HUB, token_host: str | None = None,
               gateway: str = GW, client_id: str | None = None, key: str = FILTER_KEY):
    identity = f"{gateway}/{module}"
    token = make_sas_token(token_host or host, identity, key, LATER)
    return authenticate(REGISTRY, AUDIENCE, client_id or identity,
                        f"{host}/{gateway}/{module}/?api-version=2021-04-12&DeviceClientType=x",
                        token.encode(), None, NOW)


def test_a_module_of_the_deployment_authenticates_with_its_key():
    assert module_sas().ok
    # the audience may be the hub or the gateway's own host name, in the username and the token
    assert module_sas(host="edge-1.local").ok
    assert module_sas(token_host="EDGE-1.local").ok


def test_module_refusals_say_why():
    refused(module_sas("nosuch"), 5, "not in the deployment")
    refused(module_sas("parked"), 5, "stopped")
    refused(module_sas(gateway="edge-2"), 5, "edge-2", "its own gateway")
    refused(module_sas(client_id="filter"), 5, "client id 'filter'")
    refused(module_sas(key=OTHER), 4, "signature")
    refused(module_sas(host="elsewhere.net"), 4, "elsewhere.net")


def test_a_module_token_is_not_a_device_token_and_back():
    # the filter's key signing a token for the gateway device itself is refused as a module
    device_token = make_sas_token(HUB, GW, FILTER_KEY, LATER).encode()
    result = authenticate(REGISTRY, AUDIENCE, "edge-1/filter",
                          f"{HUB}/edge-1/filter/?api-version=1", device_token, None, NOW)
    refused(result, 4, "resource", "edge-1/modules/filter")
    # a child's host-name rule stays: only the hub's name, not the gateway's
    child = authenticate(REGISTRY, AUDIENCE, "s1", user("s1", "edge-1.local"),
                         make_sas_token(HUB, "s1", PRIMARY, LATER).encode(), None, NOW)
    refused(child, 4, "edge-1.local")


def test_the_sdk_module_token_matches_ours():
    """azure-iot-device's own SAS for a module, as create_from_edge_environment would sign it."""
    sdk = os.environ.get("GATEWAYD_SDK_PYTHON")
    if not sdk:
        pytest.skip("GATEWAYD_SDK_PYTHON is not set (./dev.sh test sets it)")
    code = textwrap.dedent(f"""
        from azure.iot.device.common.auth.sastoken import RenewableSasToken
        from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism
        uri = "{HUB}/devices/edge-1/modules/filter"
        token = RenewableSasToken(uri, SymmetricKeySigningMechanism("{FILTER_KEY}"), ttl=3600)
        print(str(token))
    """)
    token = subprocess.run([sdk, "-c", code], check=True, capture_output=True,
                           text=True).stdout.strip()
    result = authenticate(REGISTRY, AUDIENCE, "edge-1/filter",
                          f"{HUB}/edge-1/filter/?api-version=1", token.encode(), None, time.time())
    assert result.ok, result.reason
