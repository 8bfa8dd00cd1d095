"""The Operator: every job of the operator's cloud side as one method of one object.

gatewayctl's cloud commands and the web console are thin layers over this class, so a rule (one
parent per child, no gateway as a child, a desired twin within IoT Hub's limits) is checked by
the same code and refused with the same words wherever the operator works. Every change is a
read-modify-write of a retained document on the cloud broker: nothing is kept here between
calls, and two operators see the same fleet. docs/operator-api.md shows it in a script.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from gateway import identity
from gateway.hub.methods import MAX_TIMEOUT_SECS
from gateway.hub.twins import MAX_TWIN_BYTES, TwinError
from gateway.operator.documents import deployment_document, merge_desired, set_ttl
from gateway.operator.errors import OperatorError, OperatorUsageError
from gateway.operator.fleet import GatewayRow, fleet_status, gateway_row
from gateway.operator.ledger import Accounts
from gateway.operator.ledger_watch import LedgerWatch
from gateway.operator.registry import (
    add_children,
    change_children,
    check_new_children,
    connection_string,
    empty_registry,
)
from gateway.operator.session import CloudSession, CloudTarget
from gateway.upstream import cloud_contract as contract

MAX_METHOD_PAYLOAD = 128 * 1024  # IoT Hub's limit for a direct method's payload
MAX_C2D_BYTES = 64 * 1024  # IoT Hub's limit for a cloud-to-device message
CHILD_ACTIONS = ("remove", "disable", "enable")


@dataclass(frozen=True)
class NewChild:
    """A child just registered; `connection_string` is None for an X.509 child. The key in it
    is shown once: the cloud keeps it only inside the registry."""

    device_id: str
    gateway: str
    registry_version: int
    connection_string: str | None


@dataclass(frozen=True)
class Child:
    device_id: str
    status: str  # enabled | disabled
    auth: str  # sas | x509


@dataclass(frozen=True)
class Registry:
    """A gateway's children as the cloud holds them (keys left out)."""

    gateway: str
    version: int
    children: tuple[Child, ...]


@dataclass(frozen=True)
class Twin:
    """The two retained halves of a twin: desired (the operator's) and reported (the gateway's);
    None where nothing was ever written."""

    desired: dict | None
    reported: dict | None


@dataclass(frozen=True)
class MethodResult:
    status: int
    payload: object  # the JSON answer, or its text when it is not JSON

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def parse_json(text: str, what: str) -> object:
    """An operator's JSON argument, or the one line that says it is not JSON."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise OperatorUsageError(f"{what}: not valid JSON ({exc})") from None


def parse_properties(items: list[str]) -> list[tuple[str, str]]:
    """`key=value` strings as a C2D message's property bag."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OperatorUsageError(f"--property: expected key=value, got {item!r}")
        out.append((key, value))
    return out


class Operator:
    """The cloud side of a fleet of gateways, over one connection to the cloud broker.

        with Operator(CloudTarget.from_url("mqtt://broker:1883"), hub_hostname="hub.example.net")
                as op:
            [new] = op.add_children("edge-1", ["sensor-1"])
            op.set_desired("sensor-1", {"rate": 5})

    Every refusal is an OperatorError (or a DataError from the gateway's own parsers) whose
    message is the one line gatewayctl prints; nothing is written when one is raised. Methods
    may be called from several threads: changes to one document are made one at a time.
    """

    def __init__(self, target: CloudTarget, hub_hostname: str = "", timeout: float = 10.0,
                 session_expiry: int = 0):
        """`session_expiry` > 0 asks the broker to keep this connection's session across a
        lost connection (for `watch_ledger`: nothing is missed while paho reconnects)."""
        self.target = target
        self.hub_hostname = hub_hostname
        self.session = CloudSession(target, timeout, session_expiry=session_expiry)
        self.prefix = target.prefix
        self._writing = threading.Lock()  # read-modify-writes from this process, one at a time
        self._ledger: LedgerWatch | None = None

    @classmethod
    def connect(cls, url: str, hub_hostname: str = "", **target: str) -> Operator:
        """From a URL (`mqtt://host:port`, `mqtts://...`) and CloudTarget's other fields."""
        return cls(CloudTarget.from_url(url, **target), hub_hostname)

    def __enter__(self) -> Operator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    # -- children ----------------------------------------------------------------------------

    def children(self, gateway: str) -> Registry:
        doc = self._registry(gateway)
        return Registry(gateway, int(doc.get("version", 0)), tuple(
            Child(c["deviceId"], c.get("status", "?"), c.get("auth", {}).get("type", "?"))
            for c in doc.get("children", [])))

    def add_children(self, gateway: str, devices: list[str], *,
                     x509_thumbprint: str | None = None, gateway_host: str | None = None,
                     hub_hostname: str | None = None) -> list[NewChild]:
        """Register children of `gateway`, refusing a device that has a parent already or is a
        gateway; SAS children get a new key, in the connection string returned (only here)."""
        hub = hub_hostname or self.hub_hostname
        if not hub and not x509_thumbprint:
            raise OperatorUsageError("--hub-hostname is needed for the connection strings (the "
                                     "gateway's gateway.hub_hostname), or use --config")
        if not devices:
            raise OperatorUsageError("name at least one device")
        with self._writing:
            registries, gateways = self.session.gateways()
            check_new_children(gateway, devices, registries, gateways)
            doc = registries.get(gateway) or empty_registry()
            new, keys = add_children(doc, devices, x509_thumbprint)
            self.session.put_retained(contract.registry_topic(self.prefix, gateway), new)
        host = gateway_host or gateway
        return [NewChild(d, gateway, new["version"],
                         connection_string(hub, d, keys[d], host) if d in keys else None)
                for d in devices]

    def change_children(self, gateway: str, devices: list[str], action: str) -> int:
        """remove, disable or enable children of `gateway`; the new registry version."""
        if action not in CHILD_ACTIONS:
            raise OperatorUsageError(f"expected one of {', '.join(CHILD_ACTIONS)}, got {action!r}")
        if not devices:
            raise OperatorUsageError("name at least one device")
        with self._writing:
            new = change_children(self._registry(gateway), devices, action)
            self.session.put_retained(contract.registry_topic(self.prefix, gateway), new)
        return new["version"]

    def remove_children(self, gateway: str, devices: list[str]) -> int:
        return self.change_children(gateway, devices, "remove")

    def disable_children(self, gateway: str, devices: list[str]) -> int:
        return self.change_children(gateway, devices, "disable")

    def enable_children(self, gateway: str, devices: list[str]) -> int:
        return self.change_children(gateway, devices, "enable")

    def parent_of(self, device: str) -> str | None:
        """The gateway whose registry names the child, or None."""
        registries, _ = self.session.gateways()
        return next((gw for gw, doc in sorted(registries.items())
                     if any(c.get("deviceId") == device for c in doc.get("children", []))), None)

    # -- twins and settings ------------------------------------------------------------------

    def twin(self, device: str) -> Twin:
        """A child's twin, or a module's (`edge-1/filter`)."""
        return Twin(*(self.session.read_json(contract.device_twin_topic(self.prefix, device, p))
                      for p in ("desired", "reported")))

    def set_desired(self, device: str, patch: dict) -> dict:
        """Merge a desired patch (null deletes) into a known child's or module's twin; the new
        document, checked against IoT Hub's limits before it is written."""
        if not isinstance(patch, dict):
            raise OperatorUsageError("--desired: expected a JSON object")
        reserved = [k for k in patch if k.startswith("$") and k != "$version"]
        if reserved:
            raise OperatorUsageError(f"--desired: property names starting with '$' are "
                                     f"reserved: {', '.join(reserved)}")
        with self._writing:
            self.check_known(device)
            topic = contract.device_twin_topic(self.prefix, device, "desired")
            try:
                new = merge_desired(self.session.read_json(topic), patch)
            except TwinError as exc:
                raise OperatorUsageError(f"--desired: {exc.message}; nothing written") from None
            size = len(json.dumps(new))
            if size > MAX_TWIN_BYTES:
                raise OperatorUsageError(
                    f"--desired: the desired document would be {size} bytes, over the "
                    f"{MAX_TWIN_BYTES}-byte limit; nothing written")
            self.session.put_retained(topic, new)
        return new

    def settings(self, gateway: str) -> Twin:
        """The gateway's own twin: its hub settings (desired) and what it reports."""
        return Twin(*(self.session.read_json(contract.gateway_twin_topic(self.prefix, gateway, p))
                      for p in ("desired", "reported")))

    def set_ttl(self, gateway: str, ttl: int) -> dict:
        """Set storeAndForwardConfiguration.timeToLiveSecs in the gateway's desired twin."""
        with self._writing:
            topic = contract.gateway_twin_topic(self.prefix, gateway, "desired")
            new = set_ttl(self.session.read_json(topic), ttl)
            self.session.put_retained(topic, new)
        return new

    # -- modules -----------------------------------------------------------------------------

    def deployment(self, gateway: str) -> Twin:
        """The module deployment (desired) and the agent's view of it (reported)."""
        return Twin(*(self.session.read_json(contract.agent_topic(self.prefix, gateway, p))
                      for p in ("desired", "reported")))

    def deploy(self, gateway: str, document: bytes | dict, source: str = "deployment") -> dict:
        """Publish a module deployment, checked by the gateway's own parser; without a version it
        gets the next one. `source` names it in refusals (gatewayctl gives the file's name)."""
        text = document if isinstance(document, bytes) else json.dumps(document).encode()
        with self._writing:
            topic = contract.agent_topic(self.prefix, gateway, "desired")
            doc = deployment_document(text, source, self.session.read_json(topic))
            self.session.put_retained(topic, doc)
        return doc

    # -- methods and messages ----------------------------------------------------------------

    def invoke(self, device: str, method: str, payload: object = None,
               timeout: float = 30.0) -> MethodResult:
        """Call a direct method on a child or a module. 404: not connected; 504: no answer in
        time (also when no gateway serves the device)."""
        if not method or "/" in method or "+" in method or "#" in method:
            raise OperatorUsageError(f"method: expected a method name, got {method!r}")
        if isinstance(timeout, bool) or not 0 < timeout <= MAX_TIMEOUT_SECS:
            raise OperatorUsageError(
                f"--timeout: expected more than 0 and at most {MAX_TIMEOUT_SECS:g} seconds")
        body = json.dumps(payload).encode()
        if len(body) > MAX_METHOD_PAYLOAD:
            raise OperatorUsageError(f"--payload: {len(body)} bytes, over the "
                                     f"{MAX_METHOD_PAYLOAD}-byte limit of a method payload")
        status, answer = self.session.invoke(device, method, body, timeout)
        try:
            value = json.loads(answer) if answer else None
        except ValueError:
            value = answer.decode(errors="replace")
        return MethodResult(status, value)

    def send(self, device: str, payload: bytes | str, properties: list[tuple[str, str]] = (),
             ttl: int | None = None) -> None:
        """A cloud-to-device message to a known child, queued by its gateway until delivered."""
        if identity.is_module(device):
            raise OperatorUsageError(f"{device} is a module: modules get no cloud-to-device "
                                     f"messages (as in IoT Hub); route messages to its inputs")
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if len(data) > MAX_C2D_BYTES:
            raise OperatorUsageError(f"--payload: {len(data)} bytes, over the {MAX_C2D_BYTES}-"
                                     f"byte limit of a cloud-to-device message")
        if ttl is not None and (isinstance(ttl, bool) or not 1 <= ttl <= 2**31 - 1):
            raise OperatorUsageError(f"--ttl: expected 1..{2**31 - 1} seconds, got {ttl}")
        self.check_known(device)
        self.session.send(device, data, list(properties), ttl)

    # -- the fleet ---------------------------------------------------------------------------

    def fleet(self) -> list[GatewayRow]:
        """Every gateway under the prefix, worst first (offline, then oldest backlog...)."""
        return fleet_status(self.session)

    def gateway(self, gateway: str) -> GatewayRow:
        """One gateway's row, from its status and reported twin (a row also for one never seen:
        offline, nothing known)."""
        status = self.session.read_json(contract.status_topic(self.prefix, gateway)) or {}
        return gateway_row(gateway, status, self.settings(gateway).reported or {})

    def watch_ledger(self, since: int | None = None) -> LedgerWatch:
        """Start keeping every gateway's loss-ledger accounts, from now (or from seq `since`):
        settlements are not retained, so only a listener has them."""
        if self._ledger is None:
            self._ledger = LedgerWatch(since).start(self.session)
        return self._ledger

    def ledger(self, gateway: str) -> Accounts | None:
        """The gateway's accounts since `watch_ledger`, or None when nothing is watching."""
        return None if self._ledger is None else self._ledger.accounts(gateway)

    # -- what the cloud knows ----------------------------------------------------------------

    def check_known(self, device: str) -> None:
        """Refuse a device no registry names, or a module no deployment names: a document
        written for it would reach nobody."""
        if identity.is_module(device):
            gateway, module = identity.device_of(device), identity.module_of(device)
            modules = (self.deployment(gateway).desired or {}).get("modules") or {}
            if module not in modules:
                raise OperatorError(f"unknown module {device}: the deployment of {gateway} has "
                                    f"no module {module} (gatewayctl deploy {gateway} FILE)")
        elif self.parent_of(device) is None:
            raise OperatorError(f"unknown device {device}: no gateway has it as a child; add "
                                f"it first (gatewayctl children add GATEWAY {device})")

    def _registry(self, gateway: str) -> dict:
        doc = self.session.read_json(contract.registry_topic(self.prefix, gateway))
        if doc is None:
            raise OperatorError(f"gateway {gateway} has no registry in the cloud")
        return doc
