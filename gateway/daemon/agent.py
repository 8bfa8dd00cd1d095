"""The IoT Edge agent's part of gatewayd: the deployment in force, its modules' identities, the
runner that keeps them running, and the reported document that tells the cloud how they are.

The deployment is synced like the registry: a retained document, refused whole when one module
is wrong (the modules in force keep running and the refusal is in the reported document), in
force at once and cached durably, so that a gateway rebooted offline runs its last deployment.
A module named there has an identity at once (keys.py): it may connect and authenticate offline
with SAS tokens the workload API signs for it. The reported document is kept while offline and
published, latest state only, when the link returns.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from gateway import identity
from gateway.child.auth import SAS, Child
from gateway.config import Config
from gateway.daemon.uplink_slot import UplinkSlot
from gateway.log import Event, event
from gateway.modules.deployment import (
    Deployment,
    DeploymentError,
    deployment_to_bytes,
    parse_deployment,
)
from gateway.modules.keys import ModuleKeys
from gateway.modules.runner import ModuleRunner
from gateway.modules.units import UnitRunner
from gateway.storage import keyspace as ks
from gateway.storage.store import Store
from gateway.storage.writes import Submit, Writes, write_or_submit
from gateway.upstream import cloud_contract as contract

# the workload API version the modules are told to speak (the IoT Edge daemon's 1.0.x/1.1+)
WORKLOAD_API_VERSION = "2019-01-30"


class Agent:
    """Holds the deployment in force and the module identities made from it; feeds the runner."""

    def __init__(self, config: Config, store: Store, submit: Submit | None,
                 uplink: UplinkSlot) -> None:
        cfg = config
        self._store = store
        self.submit = submit
        self._uplink = uplink
        self._gateway_id = cfg.gateway.id
        self._hub_hostname = cfg.gateway.hub_hostname
        self.hostname = cfg.gateway.hostname or socket.gethostname()
        self._socket = cfg.modules.workload_socket
        self.keys = ModuleKeys(store, cfg.gateway.id)
        self.deployment = self._load()
        self._identities: Mapping[str, Child] = self._make_identities(self.deployment)
        runner = UnitRunner if use_systemd(cfg.modules.runner) else ModuleRunner
        self.runner = runner(env_for=self.env_for, on_change=self.publish_reported,
                             backoff_base_secs=cfg.modules.restart_backoff_secs)
        self._reporting = False  # a reported publish in flight
        self._report_again = False

    @property
    def enabled(self) -> bool:
        """Without a workload socket modules cannot get tokens: the agent stays off."""
        return self._socket is not None

    # -- the deployment ----------------------------------------------------------------------

    def _load(self) -> Deployment:
        cached = self._store.meta.get(ks.DEPLOYMENT)
        if cached is None:
            return Deployment.empty()
        try:
            return parse_deployment(cached)
        except DeploymentError as exc:
            event(Event.DEPLOYMENT_REFUSED,
                  f"deployment: the cached copy is unreadable ({exc.message}); no module runs "
                  f"until the cloud sends the deployment again", level=logging.ERROR)
            return Deployment.empty()

    def start(self) -> None:
        """Run the deployment in force (the cached one after a reboot offline)."""
        if self.enabled:
            self.runner.apply(self.deployment)
        if self.deployment.modules:
            self._applied("in force from the cache")

    def _applied(self, what: str) -> None:
        """One journal line for both runners: which version, how many modules, run how."""
        if not self.enabled:
            how = "not run: modules.workload_socket is not set, so they could not get tokens"
        elif isinstance(self.runner, UnitRunner):
            how = "run as gatewayd-module@ systemd units"
        else:
            how = "run as gatewayd's own child processes"
        version = self.deployment.version
        event(Event.DEPLOYMENT_APPLIED, f"deployment: version {version} {what}: "
              f"{len(self.deployment.modules)} modules, {how}", version=version)

    def apply(self, data: bytes, then: Callable[[], None]) -> tuple[str, ...]:
        """A document from the cloud; returns the identities whose connections must close
        (modules removed or stopped). `then` (the broker's PUBACK) once it is cached."""
        try:
            new = parse_deployment(data)
        except DeploymentError as exc:
            then()
            self._refuse(None, exc.message)
            return ()
        old = self.deployment
        if new.version < old.version:
            then()
            self._refuse(new.version, f"version {new.version} is older than version "
                                      f"{old.version} in force")
            return ()
        if new == old:
            then()
            return ()
        writes = Writes().put(self._store.meta, ks.DEPLOYMENT, deployment_to_bytes(new))
        write_or_submit(self._store, self.submit, writes, then)
        self.deployment = new
        old_identities, self._identities = self._identities, self._make_identities(new)
        if self.enabled:
            self.runner.apply(new)
        self._applied("applied")
        return tuple(who for who, child in old_identities.items()
                     if child.enabled and not getattr(self._identities.get(who), "enabled", 0))

    def _refuse(self, version: int | None, reason: str) -> None:
        self.runner.refused(version, reason)  # for the reported document
        event(Event.DEPLOYMENT_REFUSED,
              f"deployment: document refused, version {self.deployment.version} stays in "
              f"force: {reason}; fix it and publish it again (gatewayctl deploy)",
              level=logging.WARNING)
        self.publish_reported()

    # -- identities and the workload API -----------------------------------------------------

    def _make_identities(self, deployment: Deployment) -> Mapping[str, Child]:
        out = {}
        for name, module in deployment.modules.items():
            who = identity.module_identity(self._gateway_id, name)
            out[who] = Child(who, module.status == "running", SAS, (self.keys.key(name),), ())
        return MappingProxyType(out)

    def identities(self) -> Mapping[str, Child]:
        """identity -> credentials of every module of the deployment in force."""
        return self._identities

    def sign(self, module: str, generation_id: str, data: bytes) -> bytes | None:
        if module not in self.deployment.modules:
            return None
        return self.keys.sign(module, generation_id, data)

    def env_for(self, name: str) -> dict[str, str]:
        """What `create_from_edge_environment()` reads, as the IoT Edge agent sets it."""
        return {
            "IOTEDGE_IOTHUBHOSTNAME": self._hub_hostname,
            "IOTEDGE_DEVICEID": self._gateway_id,
            "IOTEDGE_MODULEID": name,
            "IOTEDGE_GATEWAYHOSTNAME": self.hostname,
            "IOTEDGE_MODULEGENERATIONID": self.keys.generation_id(name),
            "IOTEDGE_WORKLOADURI": f"unix://{self._socket}",
            "IOTEDGE_APIVERSION": WORKLOAD_API_VERSION,
            "IOTEDGE_AUTHSCHEME": "sasToken",
        }

    # -- the reported document ---------------------------------------------------------------

    def publish_reported(self) -> None:
        """The runner's latest account to the cloud, retained; one publish in flight, and the
        changes that come meanwhile make one more publish of the then latest state."""
        uplink = self._uplink.get()
        if uplink is None or uplink.stats.state != "online":
            return  # on_online publishes it
        if self._reporting:
            self._report_again = True
            return

        def done(_ok: bool) -> None:
            self._reporting = False
            if self._report_again:
                self._report_again = False
                self.publish_reported()

        body = json.dumps(self.runner.reported(), sort_keys=True).encode()
        topic = contract.agent_topic(self._uplink.prefix, self._gateway_id, "reported")
        if uplink.publish(topic, body, retain=True, on_done=done):
            self._reporting = True

    def on_online(self) -> None:
        self._reporting = self._report_again = False
        self.publish_reported()

    def status(self) -> dict:
        return {"deployment_version": self.deployment.version,
                "modules": self.runner.reported().get("modules", {})}


def use_systemd(runner: str) -> bool:
    """`auto`: units when gatewayd is itself a systemd service (systemd sets INVOCATION_ID
    for every unit it starts, and /run/systemd/system exists only under systemd)."""
    if runner != "auto":
        return runner == "systemd"
    return bool(os.environ.get("INVOCATION_ID")) and Path("/run/systemd/system").is_dir()


class Identities:
    """Children of the registry and modules of the deployment, as one mapping for the hub and
    the router; rebuilt only when either side is replaced, not per message."""

    def __init__(self, children: Callable[[], Mapping[str, Child]],
                 modules: Callable[[], Mapping[str, Child]]) -> None:
        self._children = children
        self._modules = modules
        self._sources: tuple[object, object] | None = None
        self._merged: Mapping[str, Child] = MappingProxyType({})

    def __call__(self) -> Mapping[str, Child]:
        children, modules = self._children(), self._modules()
        if self._sources is None or self._sources[0] is not children or (
                self._sources[1] is not modules):
            self._sources = (children, modules)
            self._merged = MappingProxyType({**children, **modules})
        return self._merged
