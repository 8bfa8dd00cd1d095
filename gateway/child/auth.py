"""Offline authentication of child devices against the cached registry.

The gateway must admit its children while the cloud is unreachable, so it checks their IoT Hub
credentials itself: SAS tokens signed with the device key, or X.509 certificates whose thumbprint
the registry lists. The rules follow the IoT Hub device MQTT API so that unmodified Azure SDK
devices connect to the gateway exactly as they would to the hub.

A SAS token's string-to-sign is the `sr` field exactly as it appears in the token (that is, the
URL-encoded resource URI), a newline and the `se` field. The Azure SDKs build `sr` with
percent-encoding (Python: every reserved character, uppercase hex); the hub signs whatever text the
client sent, so the gateway does the same and does not re-encode.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, unquote

from gateway import identity
from gateway.errors import PeerError, RegistryError

ACCEPTED = 0
BAD_CREDENTIALS = 4  # MQTT 3.1.1 CONNACK: bad user name or password
NOT_AUTHORIZED = 5  # MQTT 3.1.1 CONNACK: not authorized

SAS = "sas"
X509 = "x509"
SAS_PREFIX = "SharedAccessSignature "
_SAS_FIELDS = {"sr", "sig", "se", "skn"}

# IoT Hub's device id alphabet; anything else cannot be a device the hub created.
_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9\-.+%_#*?!(),:=@$']{1,128}")
_THUMBPRINT_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


# -- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Child:
    device_id: str
    enabled: bool
    auth_type: str  # SAS or X509
    keys: tuple[bytes, ...]  # primary then secondary, decoded (SAS devices)
    thumbprints: tuple[str, ...]  # lowercase hex, primary then secondary (X.509 devices)
    method_callers: tuple[str, ...] = ()  # children that may invoke its methods; "*" = any


@dataclass(frozen=True)
class Registry:
    version: int
    children: Mapping[str, Child]

    @staticmethod
    def empty() -> Registry:
        """What is in force before the cloud has ever sent a registry: nobody may connect."""
        return Registry(-1, MappingProxyType({}))


def parse_registry(data: bytes) -> Registry:
    """Check the whole document; one bad child refuses it all, so no child half-changes.

    Unknown fields are ignored so that the cloud may add some before the gateway knows them.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"expected a JSON object, got {_kind(doc)}")
    version = doc.get("version")
    if type(version) is not int or version < 0:
        raise RegistryError(f"version: expected a non-negative integer, got {_show(version)}")
    entries = doc.get("children")
    if not isinstance(entries, list):
        raise RegistryError(f"children: expected a list, got {_kind(entries)}")
    children: dict[str, Child] = {}
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        child = _parse_child(entry, f"children[{i}]")
        if child.device_id in children:
            raise RegistryError(
                f"children[{i}].deviceId: duplicate deviceId {_show(child.device_id)} "
                f"(also children[{first_seen[child.device_id]}])"
            )
        children[child.device_id] = child
        first_seen[child.device_id] = i
    return Registry(version, MappingProxyType(children))


def registry_to_bytes(registry: Registry) -> bytes:
    """Canonical JSON (sorted, compact) that parse_registry reads back to an equal Registry."""
    children = [_child_to_json(registry.children[d]) for d in sorted(registry.children)]
    doc = {"version": registry.version, "children": children}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _parse_child(entry: Any, where: str) -> Child:
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: expected an object, got {_kind(entry)}")
    device_id = entry.get("deviceId")
    if not isinstance(device_id, str) or not _DEVICE_ID_RE.fullmatch(device_id):
        raise RegistryError(
            f"{where}.deviceId: expected an IoT Hub device id (1..128 characters), "
            f"got {_show(device_id)}"
        )
    status = entry.get("status")
    if status not in ("enabled", "disabled"):
        raise RegistryError(
            f"{where}.status: unknown status {_show(status)} (expected enabled or disabled)"
        )
    auth = entry.get("auth")
    if not isinstance(auth, dict):
        raise RegistryError(f"{where}.auth: expected an object, got {_kind(auth)}")
    auth_type = auth.get("type")
    keys: tuple[bytes, ...] = ()
    thumbprints: tuple[str, ...] = ()
    if auth_type == SAS:
        keys = _pair(auth, "primaryKey", "secondaryKey", f"{where}.auth", _decode_key)
    elif auth_type == X509:
        thumbprints = _pair(
            auth, "primaryThumbprint", "secondaryThumbprint", f"{where}.auth", normalize_thumbprint
        )
    else:
        raise RegistryError(
            f"{where}.auth.type: unknown type {_show(auth_type)} (expected sas or x509)"
        )
    callers = entry.get("methodCallers", [])
    if not isinstance(callers, list) or not all(isinstance(c, str) for c in callers):
        raise RegistryError(
            f"{where}.methodCallers: expected a list of device ids or \"*\", got {_show(callers)}"
        )
    return Child(
        device_id, status == "enabled", auth_type, keys, thumbprints, tuple(sorted(set(callers)))
    )


def _pair(auth: dict, primary: str, secondary: str, where: str, convert: Any) -> tuple:
    """The primary credential is required; the secondary (for rollover) may be absent or null."""
    if auth.get(primary) is None:
        raise RegistryError(f"{where}.{primary}: required")
    out = []
    for name in (primary, secondary):
        value = auth.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise RegistryError(f"{where}.{name}: expected a string, got {_kind(value)}")
        try:
            out.append(convert(value))
        except ValueError as exc:
            raise RegistryError(f"{where}.{name}: {exc}") from None
    return tuple(out)


def _decode_key(value: str) -> bytes:
    try:
        key = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("not valid base64") from None
    if not key:
        raise ValueError("empty key")
    return key


def normalize_thumbprint(value: str) -> str:
    """Portal and openssl spellings (colons, spaces, uppercase) all mean the same thumbprint."""
    hexed = re.sub(r"[\s:]", "", value).lower()
    if not _THUMBPRINT_RE.fullmatch(hexed):
        raise ValueError("expected 40 (SHA-1) or 64 (SHA-256) hex digits")
    return hexed


def _child_to_json(child: Child) -> dict[str, Any]:
    if child.auth_type == SAS:
        names = ("primaryKey", "secondaryKey")
        values = [base64.b64encode(k).decode() for k in child.keys]
    else:
        names = ("primaryThumbprint", "secondaryThumbprint")
        values = list(child.thumbprints)
    auth = {"type": child.auth_type, **dict(zip(names, values, strict=False))}
    status = "enabled" if child.enabled else "disabled"
    entry = {"deviceId": child.device_id, "status": status, "auth": auth}
    if child.method_callers:
        entry["methodCallers"] = list(child.method_callers)
    return entry


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), _show(value))


def _show(value: Any) -> str:
    return json.dumps(value)[:80]


# -- authentication ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    return_code: int  # the MQTT 3.1.1 CONNACK code to send
    reason: str  # one journal line; never holds a key, token or signature
    method: str  # SAS, X509, or "none" when refused before the device was known


class _Refused(PeerError):
    def __init__(self, return_code: int, reason: str) -> None:
        super().__init__(reason)
        self.return_code = return_code
        self.reason = reason


@dataclass(frozen=True)
class Audience:
    """Whom a CONNECT may address: the hub (children and modules) or, for modules, also the
    gateway itself by host name, and which modules exist (identity -> credentials)."""

    hub_hostname: str
    gateway_id: str = ""
    gateway_hostnames: tuple[str, ...] = ()
    modules: Mapping[str, Child] = field(default_factory=lambda: MappingProxyType({}))

    def hosts_for(self, module: bool) -> tuple[str, ...]:
        return (self.hub_hostname, *self.gateway_hostnames) if module else (self.hub_hostname,)


def authenticate(
    registry: Registry,
    audience: Audience | str,
    client_id: str,
    username: str | None,
    password: bytes | None,
    cert_der: bytes | None,
    now: float,
) -> AuthResult:
    """Decide a CONNECT as IoT Hub (or, for a module, the IoT Edge hub) would, from the
    registry and the deployment alone (no network). `audience` may be the hub host name."""
    if isinstance(audience, str):
        audience = Audience(audience)
    method = "none"
    try:
        identity = _identity_from_username(username, audience)
        if client_id != identity:
            raise _Refused(
                NOT_AUTHORIZED,
                f"client id {client_id!r} does not match {identity!r} in username; "
                f"the MQTT client id must be the device id (a module's: gateway/module)",
            )
        child = _known(registry, audience, identity)
        method = child.auth_type
        if child.auth_type == SAS:
            _check_sas(child, audience, password, now)
        else:
            _check_x509(child, cert_der)
    except _Refused as refusal:
        return AuthResult(False, refusal.return_code, refusal.reason, method)
    return AuthResult(True, ACCEPTED, f"authenticated by {method}", method)


def authenticate_token(
    registry: Registry, audience: Audience, identity: str, token: str, now: float
) -> AuthResult:
    """A SAS token presented for `identity` outside a CONNECT (the HTTPS head's Authorization
    header), decided by the same rules: known, enabled, signed with its key, not expired."""
    method = "none"
    try:
        child = _known(registry, audience, identity)
        method = child.auth_type
        if child.auth_type != SAS:
            raise _Refused(NOT_AUTHORIZED, f"{identity!r} authenticates by X.509, not by a "
                                           f"SAS token")
        _check_sas(child, audience, token.encode(), now)
    except _Refused as refusal:
        return AuthResult(False, refusal.return_code, refusal.reason, method)
    return AuthResult(True, ACCEPTED, f"authenticated by {method}", method)


def _identity_from_username(username: str | None, audience: Audience) -> str:
    """`{hub}/{device}/?api-version=...`, or `{host}/{gateway}/{module}/?...` for a module;
    the query string's content is not checked."""
    hub = audience.hub_hostname
    expected = f"expected '{hub}/<device id>/?api-version=...'"
    if not username:
        raise _Refused(BAD_CREDENTIALS, f"no username; {expected}")
    path = username.partition("?")[0]
    parts = path[:-1].split("/") if path.endswith("/") else path.split("/")
    module = len(parts) == 3
    if len(parts) not in (2, 3) or not all(parts[1:]):
        raise _Refused(BAD_CREDENTIALS, f"username {username!r} is malformed; {expected}")
    host = parts[0]
    if host.lower() not in (h.lower() for h in audience.hosts_for(module)):
        raise _Refused(
            BAD_CREDENTIALS,
            f"username names hub {host!r} but this gateway serves {hub!r}; {expected}",
        )
    if not module:
        return parts[1]
    if parts[1] != audience.gateway_id:
        raise _Refused(
            NOT_AUTHORIZED,
            f"username names module {parts[2]!r} of device {parts[1]!r}, but this gateway is "
            f"{audience.gateway_id!r}; a module connects to its own gateway",
        )
    return f"{parts[1]}/{parts[2]}"


def _known(registry: Registry, audience: Audience, identity: str) -> Child:
    if "/" not in identity:
        return _known_child(registry, identity)
    module = audience.modules.get(identity)
    if module is None:
        raise _Refused(
            NOT_AUTHORIZED,
            f"unknown module {identity!r}: not in the deployment in force; deploy it "
            f"(gatewayctl deploy) before it connects",
        )
    if not module.enabled:
        raise _Refused(NOT_AUTHORIZED, f"module {identity!r} is stopped in the deployment")
    return module


def _known_child(registry: Registry, device_id: str) -> Child:
    child = registry.children.get(device_id)
    if child is None:
        raise _Refused(
            NOT_AUTHORIZED,
            f"unknown device {device_id!r}: not a child of this gateway (registry version "
            f"{registry.version}); add it as a child in the cloud registry",
        )
    if not child.enabled:
        raise _Refused(
            NOT_AUTHORIZED, f"device {device_id!r} is disabled in the registry; enable it there"
        )
    return child


def _check_sas(child: Child, audience: Audience, password: bytes | None, now: float) -> None:
    if password is None:
        raise _Refused(BAD_CREDENTIALS, "no password; a SAS device must send a SAS token")
    try:
        token = password.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(BAD_CREDENTIALS, "password is not UTF-8, so not a SAS token") from None
    fields = _parse_sas(token)
    _check_resource(unquote(fields["sr"]), audience, child.device_id)
    expiry = _parse_expiry(fields["se"])
    _check_signature(child, fields)
    if expiry < now:
        raise _Refused(
            BAD_CREDENTIALS,
            f"SAS token expired at {_utc(expiry)} (local clock {_utc(now)}); the device must "
            f"renew its token, or one of the two clocks is wrong",
        )


def _parse_sas(token: str) -> dict[str, str]:
    form = "SharedAccessSignature sr=...&sig=...&se=..."
    if not token.startswith(SAS_PREFIX):
        raise _Refused(BAD_CREDENTIALS, f"password is not a SAS token; expected {form}")
    fields: dict[str, str] = {}
    for item in token[len(SAS_PREFIX) :].split("&"):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in _SAS_FIELDS or name in fields:
            raise _Refused(
                BAD_CREDENTIALS, f"SAS token field {name!r} is unknown, repeated or empty; {form}"
            )
        fields[name] = value.strip()
    missing = sorted({"sr", "sig", "se"} - fields.keys())
    if missing:
        raise _Refused(BAD_CREDENTIALS, f"SAS token lacks {', '.join(missing)}; expected {form}")
    return fields


def _check_resource(resource: str, audience: Audience, identity: str) -> None:
    """`{hub}/devices/{device}`, or `{host}/devices/{gw}/modules/{m}` for a module (whose
    host may be the hub's or the gateway's own name)."""
    module = "/" in identity
    device, _, module_id = identity.partition("/")
    want = ["devices", device, "modules", module_id] if module else ["devices", device]
    parts = resource.split("/")
    if not module and len(parts) > 3 and parts[1:2] == ["devices"] and parts[3:4] == ["modules"]:
        raise _Refused(
            BAD_CREDENTIALS, f"SAS token is for a module ({resource}); use the device's own token"
        )
    hosts = [h.lower() for h in audience.hosts_for(module)]
    if parts[1:] != want or parts[0].lower() not in hosts:
        expected = f"{audience.hub_hostname}/{'/'.join(want)}"
        raise _Refused(
            BAD_CREDENTIALS,
            f"SAS token is for resource {resource!r}, expected {expected!r}; "
            f"generate the token for this hub host name and {'module' if module else 'device'}",
        )


def _parse_expiry(se: str) -> int:
    if not se.isascii() or not se.isdigit():
        raise _Refused(BAD_CREDENTIALS, f"SAS token se={se!r} is not a Unix time in seconds")
    return int(se)


def _check_signature(child: Child, fields: dict[str, str]) -> None:
    """Sign `sr` as sent (already URL-encoded) and compare with every key in constant time."""
    try:
        presented = base64.b64decode(unquote(fields["sig"]), validate=True)
    except binascii.Error:
        raise _Refused(BAD_CREDENTIALS, "SAS token signature is not base64") from None
    message = f"{fields['sr']}\n{fields['se']}".encode()
    for key in child.keys:
        expected = hmac.new(key, message, hashlib.sha256).digest()
        if hmac.compare_digest(expected, presented):
            return
    raise _Refused(
        BAD_CREDENTIALS,
        "SAS token signature does not match the primary or secondary key in the registry; "
        "check the device key (was it regenerated?)",
    )


def _check_x509(child: Child, cert_der: bytes | None) -> None:
    if cert_der is None:
        raise _Refused(
            BAD_CREDENTIALS,
            "no client certificate presented; an X.509 device must connect over TLS with its "
            "certificate (and listen.client_ca_file must be set)",
        )
    presented = {hashlib.sha1(cert_der).hexdigest(), hashlib.sha256(cert_der).hexdigest()}
    if presented.isdisjoint(child.thumbprints):
        raise _Refused(
            NOT_AUTHORIZED,
            f"client certificate (SHA-256 thumbprint {hashlib.sha256(cert_der).hexdigest()}) "
            f"matches neither thumbprint in the registry; register this certificate's thumbprint",
        )


def _utc(t: float) -> str:
    stamp = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- token making -----------------------------------------------------------------------------


def make_sas_token(hub_hostname: str, device_id: str, key_b64: str, expiry: int) -> str:
    """A device's (or module's, `edge-1/filter`) SAS token, byte for byte what azure-iot-device
    builds for the same inputs."""
    resource = quote(f"{hub_hostname}/devices/{identity.path(device_id)}", safe="")
    message = f"{resource}\n{expiry}".encode()
    digest = hmac.new(base64.b64decode(key_b64), message, hashlib.sha256).digest()
    signature = quote(base64.b64encode(digest).decode(), safe="")
    return f"SharedAccessSignature sr={resource}&sig={signature}&se={expiry}"
