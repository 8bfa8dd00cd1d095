"""A gateway's registry of children, edited as a document: the rules only the cloud side sees.

The gateway cannot see other gateways, so the rules an operator can break across the fleet are
checked here, before anything is written: a child has one parent, and a gateway is not anyone's
child. The new document is then checked by the gateway's own parser, so a refused edit changes
nothing.
"""

from __future__ import annotations

import base64
import json
import os

from gateway.child.auth import normalize_thumbprint, parse_registry
from gateway.errors import RegistryError
from gateway.operator.errors import OperatorError


def new_sas_key() -> str:
    """A 256-bit key, base64, as IoT Hub generates them."""
    return base64.b64encode(os.urandom(32)).decode()


def connection_string(hub_hostname: str, device_id: str, key: str, gateway_host: str) -> str:
    """What the device SDKs take: HostName is the SAS audience, GatewayHostName where to dial."""
    return (f"HostName={hub_hostname};DeviceId={device_id};SharedAccessKey={key};"
            f"GatewayHostName={gateway_host}")


def empty_registry() -> dict:
    return {"version": 0, "children": []}


def check_new_children(gateway_id: str, devices: list[str], registries: dict[str, dict],
                       gateways: set[str]) -> None:
    """Refuse second parents, gateways as children, and duplicates, naming the device."""
    if len(set(devices)) != len(devices):
        raise OperatorError("the same device is named twice")
    for device in devices:
        if device in gateways or device == gateway_id:
            raise OperatorError(f"{device} is a gateway; a gateway cannot be a child device")
        for parent, doc in registries.items():
            if any(c.get("deviceId") == device for c in doc.get("children", [])):
                if parent == gateway_id:
                    raise OperatorError(f"{device} is already a child of {gateway_id}")
                raise OperatorError(
                    f"{device} already has a parent, {parent}; remove it there first "
                    f"(gatewayctl children remove {parent} {device})")


def add_children(doc: dict, devices: list[str], thumbprint: str | None) -> tuple[dict, dict]:
    """A new registry document with the devices added; returns it and each device's key."""
    keys: dict[str, str] = {}
    children = list(doc.get("children", []))
    for device in devices:
        if thumbprint:
            try:
                auth = {"type": "x509", "primaryThumbprint": normalize_thumbprint(thumbprint)}
            except ValueError as exc:
                raise OperatorError(f"--x509-thumbprint: {exc}") from None
        else:
            keys[device] = new_sas_key()
            auth = {"type": "sas", "primaryKey": keys[device]}
        children.append({"deviceId": device, "status": "enabled", "auth": auth})
    return _next_version(doc, children), keys


def change_children(doc: dict, devices: list[str], action: str) -> dict:
    """remove, enable or disable; every named device must be a child already."""
    known = {c.get("deviceId") for c in doc.get("children", [])}
    missing = [d for d in devices if d not in known]
    if missing:
        raise OperatorError(f"not children of this gateway: {', '.join(missing)}")
    children = []
    for child in doc.get("children", []):
        if child.get("deviceId") not in devices:
            children.append(child)
        elif action != "remove":
            children.append(dict(child, status="enabled" if action == "enable" else "disabled"))
    return _next_version(doc, children)


def _next_version(doc: dict, children: list[dict]) -> dict:
    new = dict(doc, version=int(doc.get("version", 0)) + 1, children=children)
    try:
        parse_registry(json.dumps(new).encode())  # what the gateway will check, checked first
    except RegistryError as exc:
        raise OperatorError(
            f"the new registry would be refused by the gateway: {exc.message}"
        ) from None
    return new
