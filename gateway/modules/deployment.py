"""The deployment document: which modules the gateway runs, in the IoT Edge agent's shape.

The cloud publishes it retained on `{prefix}gateways/{gw}/agent/desired`. Its `modules` section
is the `modules` section of an IoT Edge deployment manifest's `$edgeAgent` desired properties,
with `type: "process"` instead of `docker` and `settings.command` (an argv) instead of
`settings.image`, so that an IoT Edge operator reads it at a glance:

    {"version": 3,
     "modules": {"filter": {"version": "1.0", "type": "process", "status": "running",
                            "restartPolicy": "always", "startupOrder": 1,
                            "settings": {"command": ["/opt/filter/bin/filter", "-v"],
                                         "user": "filter"},
                            "env": {"THRESHOLD": {"value": "25"}}}}}

A document is checked whole: one bad module refuses it all, with a reason that names the path
(`modules.filter.settings.command: ...`), so that the modules in force never half-change.
Unknown fields are ignored so that the cloud may add some before the gateway knows them. The
document-level `version` only moves forward (the caller keeps the one in force, as the registry
does), so a stale retained copy cannot undo a newer deployment.

Defaults are IoT Edge's: `status` running, `restartPolicy` always, `startupOrder` 4294967295
(started last), a module's `version` empty. `restartPolicy: on-unhealthy` is refused: it means
"restart on a crash or a failed health check", and a process module has no health check, so
accepting it would promise something the runner cannot do; on-failure is the same rule without
the health check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.errors import DataError

RUNNING = "running"
STOPPED = "stopped"
NEVER = "never"
ON_FAILURE = "on-failure"
ALWAYS = "always"
STATUSES = (RUNNING, STOPPED)
RESTART_POLICIES = (NEVER, ON_FAILURE, ALWAYS)
DEFAULT_STARTUP_ORDER = 4294967295  # IoT Edge's: modules without one start after the others
MAX_STARTUP_ORDER = 4294967295  # a uint32, as IoT Edge's schema says

# IoT Hub's module id alphabet, at most 64 characters; `$` is reserved for the first one
# ($edgeAgent, $edgeHub are the system modules).
_MODULE_ID_RE = re.compile(r"[A-Za-z0-9\-.+%_#*?!(),:=@']"
                           r"[A-Za-z0-9\-.+%_#*?!(),:=@$']{0,63}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class DeploymentError(DataError):
    """A deployment document is refused; the message names the path of the first bad field.
    The deployment in force stays."""


@dataclass(frozen=True)
class Module:
    """One module as the deployment wants it."""

    name: str
    version: str
    status: str  # RUNNING or STOPPED
    restart_policy: str  # NEVER, ON_FAILURE or ALWAYS
    startup_order: int
    command: tuple[str, ...]  # argv; command[0] is looked up on PATH if it has no "/"
    user: str | None  # settings.user; None: gatewayd's own user (process mode)
    env: tuple[tuple[str, str], ...]  # sorted by name

    def spec(self) -> tuple:
        """What the running process is made of: a change restarts it. The status, the restart
        policy and the startup order are not in it: they change what is done, not the process."""
        return (self.version, self.command, self.user, self.env)


@dataclass(frozen=True)
class Deployment:
    version: int
    modules: Mapping[str, Module]

    @staticmethod
    def empty() -> Deployment:
        """What is in force before any document: no modules."""
        return Deployment(-1, MappingProxyType({}))

    def in_startup_order(self) -> list[Module]:
        """Lowest startupOrder first; ties by name, so that the order is the same every time."""
        return sorted(self.modules.values(), key=lambda m: (m.startup_order, m.name))


def parse_deployment(data: bytes) -> Deployment:
    """Check the whole document; DeploymentError names the path of the first bad field."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DeploymentError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DeploymentError(f"expected a JSON object, got {_kind(doc)}")
    version = doc.get("version")
    if type(version) is not int or version < 0:
        raise DeploymentError(f"version: expected a non-negative integer, got {_show(version)}")
    entries = doc.get("modules", {})
    if not isinstance(entries, dict):
        raise DeploymentError(f"modules: expected an object of module name to module, "
                              f"got {_kind(entries)}")
    modules = {name: _module(name, entry) for name, entry in entries.items()}
    return Deployment(version, MappingProxyType(modules))


def deployment_to_bytes(deployment: Deployment) -> bytes:
    """Canonical JSON (sorted, compact) that parse_deployment reads back to an equal
    Deployment: the cache's form."""
    modules = {name: _module_to_json(m) for name, m in sorted(deployment.modules.items())}
    doc = {"version": deployment.version, "modules": modules}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _module(name: str, entry: Any) -> Module:
    where = f"modules.{name}"
    if not _MODULE_ID_RE.fullmatch(name):
        reason = ("names starting with $ are reserved for the system modules" if
                  name.startswith("$") else "expected an IoT Hub module id (1..64 of A-Z a-z "
                  "0-9 - . + % _ # * ? ! ( ) , : = @ $ ')")
        raise DeploymentError(f"{where}: {reason}, got {_show(name)}")
    if not isinstance(entry, dict):
        raise DeploymentError(f"{where}: expected an object, got {_kind(entry)}")
    version = entry.get("version", "")
    if not isinstance(version, str):
        raise DeploymentError(f"{where}.version: expected a string, got {_show(version)}")
    kind = entry.get("type")
    if kind != "process":
        raise DeploymentError(f"{where}.type: expected \"process\" (the only type this gateway "
                              f"runs), got {_show(kind)}")
    status = _choice(entry, "status", STATUSES, RUNNING, where)
    policy = entry.get("restartPolicy", ALWAYS)
    if policy == "on-unhealthy":
        raise DeploymentError(f"{where}.restartPolicy: on-unhealthy needs a health check, which "
                              f"a process module does not have; use on-failure (the same rule "
                              f"without it) or always")
    policy = _choice(entry, "restartPolicy", RESTART_POLICIES, ALWAYS, where)
    order = entry.get("startupOrder", DEFAULT_STARTUP_ORDER)
    if type(order) is not int or not 0 <= order <= MAX_STARTUP_ORDER:
        raise DeploymentError(f"{where}.startupOrder: expected an integer from 0 to "
                              f"{MAX_STARTUP_ORDER}, got {_show(order)}")
    command, user = _settings(entry.get("settings"), f"{where}.settings")
    env = _env(entry.get("env", {}), f"{where}.env")
    return Module(name, version, status, policy, order, command, user, env)


def _choice(entry: dict, key: str, allowed: tuple[str, ...], default: str, where: str) -> str:
    value = entry.get(key, default)
    if value not in allowed:
        raise DeploymentError(f"{where}.{key}: expected one of {', '.join(allowed)}, "
                              f"got {_show(value)}")
    return value


def _settings(settings: Any, where: str) -> tuple[tuple[str, ...], str | None]:
    if not isinstance(settings, dict):
        raise DeploymentError(f"{where}: expected an object with a command, got "
                              f"{_kind(settings)}")
    command = settings.get("command")
    if (not isinstance(command, list) or not command
            or not all(isinstance(a, str) for a in command) or not command[0]
            or any("\0" in a for a in command)):
        raise DeploymentError(f"{where}.command: expected a non-empty list of strings (the "
                              f"argv, no NUL), got {_show(command)}")
    user = settings.get("user")
    if user is not None:
        if not isinstance(user, str) or not _USER_RE.fullmatch(user):
            raise DeploymentError(f"{where}.user: expected a user name, got {_show(user)}")
        if user == "root":
            raise DeploymentError(f"{where}.user: a module may not run as root; name an "
                                  f"unprivileged user")
    return tuple(command), user


def _env(env: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(env, dict):
        raise DeploymentError(f"{where}: expected an object of NAME: {{\"value\": text}}, "
                              f"got {_kind(env)}")
    out = []
    for name, item in env.items():
        if not _ENV_NAME_RE.fullmatch(name):
            raise DeploymentError(f"{where}: {_show(name)} is not an environment variable "
                                  f"name (letters, digits, _; not starting with a digit)")
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, str) or "\0" in value:
            raise DeploymentError(f"{where}.{name}: expected {{\"value\": text}}, got "
                                  f"{_show(item)}")
        out.append((name, value))
    return tuple(sorted(out))


def _module_to_json(m: Module) -> dict:
    settings: dict[str, Any] = {"command": list(m.command)}
    if m.user is not None:
        settings["user"] = m.user
    return {"version": m.version, "type": "process", "status": m.status,
            "restartPolicy": m.restart_policy, "startupOrder": m.startup_order,
            "settings": settings, "env": {k: {"value": v} for k, v in m.env}}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), _show(value))


def _show(value: Any) -> str:
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError):
        return repr(value)[:80]
