"""The TOML configuration file, read once at start into immutable, validated settings.

Everything the operator can get wrong is found here, before the store or a socket is touched, and
reported as one line naming the file and the key, so that a typo never becomes a half-started
daemon. The schema is a table (section -> key -> converter and default) so that a new key is one
line in the table plus one field in its dataclass.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import ConfigError

STORAGE_ENV = "storageFolder"  # the Azure IoT Edge hub's name for the same override
CLOUD_SCHEMES = {"mqtt": (1883, False), "mqtts": (8883, True)}
LOG_LEVELS = ("debug", "info", "warning", "error")

_ID_RE = re.compile(r"[A-Za-z0-9\-._:]{1,128}")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewaySettings:
    id: str
    hub_hostname: str
    hostname: str = ""  # the name modules dial (IOTEDGE_GATEWAYHOSTNAME); "": this machine's


@dataclass(frozen=True)
class ModulesSettings:
    """The site's modules, run from the deployment (docs/modules.md)."""

    workload_socket: Path | None = None  # the IoT Edge workload API; None: off, no modules
    runner: str = "auto"  # process, systemd, or auto: systemd when gatewayd runs under it
    restart_backoff_secs: float = 10.0  # the first restart's delay; doubles up to 300 s
    trust_bundle: Path | None = None  # the CA modules trust; None: ca.pem beside listen.tls_cert


@dataclass(frozen=True)
class ListenSettings:
    host: str
    port: int
    tls_cert: Path | None
    tls_key: Path | None
    client_ca_file: Path | None
    plain_port: int
    max_message_bytes: int
    max_connections: int
    connect_timeout_secs: float = 10.0  # TLS handshake + CONNECT, slowloris guard
    https_port: int = 0  # the 443 head (MQTT and AMQP over WebSocket), TLS with tls_cert; 0: off
    amqp_port: int = 0  # the 5671 head (AMQP 1.0), TLS with tls_cert; 0: off


@dataclass(frozen=True)
class StorageSettings:
    path: Path
    time_to_live_secs: int
    commit_interval_ms: int
    commit_max_messages: int
    max_bytes: int = 0  # backlog quota in bytes; 0: none (min_free_percent still applies)
    min_free_percent: float = 10.0  # the filesystem keeps at least this much free
    full_policy: str = "drop-oldest"  # or "refuse-new"
    reserve_bytes: int = 32 * 1024 * 1024  # the ballast that lets a full store reopen


@dataclass(frozen=True)
class CloudSettings:
    url: str
    prefix: str
    client_id: str
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    username: str
    password: str = field(repr=False)  # kept out of reprs so it never reaches a log line
    inflight_window: int
    keepalive_secs: int
    reconnect_min_secs: float
    reconnect_max_secs: float
    live_share: float = 0.0  # share of the window for the newest messages while a backlog drains
    max_refusals: int = 3  # cloud refusals of one message before it goes to the dead letters
    max_publish_rate: float = 0.0  # messages per second to the cloud; 0: unlimited
    dns_servers: tuple[str, ...] = ()  # pinned resolvers for the cloud host; (): the system's
    ledger_interval_secs: float = 10.0  # the loss ledger's cadence (upstream/ledger.py)
    scheme: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False

    @property
    def enabled(self) -> bool:
        """No url means no cloud: the gateway runs offline and buffers."""
        return bool(self.url)


@dataclass(frozen=True)
class ControlSettings:
    socket: Path


@dataclass(frozen=True)
class LogSettings:
    level: str


@dataclass(frozen=True)
class AuthSettings:
    offline_trust_secs: int  # 0: cached credentials are trusted for ever


@dataclass(frozen=True)
class MetricsSettings:
    host: str
    port: int  # 0: off


@dataclass(frozen=True)
class LimitsSettings:
    """What one child may ask of the gateway, so that a flood slows only the child that sends it.

    The rates follow Azure IoT Hub's S1 throttles for a whole hub (twin updates 50/s,
    device-to-cloud sends 100/s; "IoT Hub quotas and throttling"): a child that stays under
    them would also be served by IoT Hub itself, and a buggy one that loops cannot wear the
    card faster than that. Past a rate the child is slowed (its socket is not read until a
    token is there), never disconnected. 0 turns a rate off.
    """

    twin_updates_per_sec: float = 50.0  # reported patches
    routed_messages_per_sec: float = 100.0  # telemetry a route puts into another child's queue
    # requests waiting for a commit or the cloud: a child at the bound gets one commit's worth
    # (128 per 100 ms, over 1,000 patches/s) and cannot take the loop from the others
    max_outstanding_per_child: int = 128


@dataclass(frozen=True)
class Config:
    gateway: GatewaySettings
    listen: ListenSettings
    storage: StorageSettings
    cloud: CloudSettings
    control: ControlSettings
    log: LogSettings
    source: Path
    metrics: MetricsSettings = MetricsSettings("127.0.0.1", 0)
    auth: AuthSettings = AuthSettings(0)
    limits: LimitsSettings = LimitsSettings()
    modules: ModulesSettings = ModulesSettings()


# -- schema -----------------------------------------------------------------------------------


class _Expected(ConfigError):
    """A converter's refusal: what the key should hold (the caller adds file, key and value)."""


class _Problem(ConfigError):
    """A whole-file problem already phrased as `key: what is wrong` (the caller adds the file)."""


REQUIRED = object()
Converter = Callable[[Any, Path], Any]


@dataclass(frozen=True)
class Key:
    """One key of the schema: how to check and convert its TOML value, and its default."""

    convert: Converter
    default: Any = REQUIRED


def integer(low: int, high: int) -> Converter:
    def convert(value: Any, _base: Path) -> int:
        # bool is a subclass of int in Python; `port = true` is a typo, not port 1
        if type(value) is not int or not low <= value <= high:
            raise _Expected(f"an integer {low}..{high}")
        return value

    return convert


def number(low: float, high: float = math.inf, *, low_open: bool = False) -> Converter:
    wanted = f"a number > {low:g}" if low_open else f"a number {low:g}..{high:g}"

    def convert(value: Any, _base: Path) -> float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise _Expected(wanted)
        if value < low or (low_open and value == low) or value > high:
            raise _Expected(wanted)
        return float(value)

    return convert


def text(check: Callable[[str], bool] = lambda _s: True, wanted: str = "a string") -> Converter:
    def convert(value: Any, _base: Path) -> str:
        if not isinstance(value, str) or not check(value):
            raise _Expected(wanted)
        return value

    return convert


def ip_list() -> Converter:
    """An array of IP addresses (resolvers are dialled by address: they cannot need DNS)."""

    def convert(value: Any, _base: Path) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise _Expected("an array of IP addresses")
        for item in value:
            try:
                ipaddress.ip_address(item)
            except (ValueError, TypeError):
                raise _Expected(f"an array of IP addresses ({_show(item)} is not one)") from None
        return tuple(value)

    return convert


def choice(*options: str) -> Converter:
    return text(lambda s: s in options, "one of " + ", ".join(options))


def path(*, optional: bool) -> Converter:
    """Relative paths are relative to the config file, so systemd and a checkout both work."""

    def convert(value: Any, base: Path) -> Path | None:
        if not isinstance(value, str) or (not value and not optional):
            raise _Expected('a path ("" to leave unset)' if optional else "a non-empty path")
        return _resolve(value, base) if value else None

    return convert


def is_hostname(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return 0 < len(name) <= 253 and all(_LABEL_RE.fullmatch(label) for label in labels)


def is_host(name: str) -> bool:
    """A listen address or a broker: a host name or an IPv4/IPv6 literal."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return is_hostname(name)
    return True


def _is_prefix(prefix: str) -> bool:
    return prefix == "" or (prefix.endswith("/") and not set(prefix) & {"+", "#"})


SCHEMA: Mapping[str, Mapping[str, Key]] = {
    "gateway": {
        "id": Key(text(_ID_RE.fullmatch, "1..128 characters of A-Z a-z 0-9 - . _ :")),
        "hub_hostname": Key(text(is_hostname, "a host name")),
        "hostname": Key(text(lambda h: h == "" or is_host(h), "a host name or IP address"), ""),
    },
    "listen": {
        "host": Key(text(is_host, "a host name or IP address"), "0.0.0.0"),
        "port": Key(integer(0, 65535), 8883),
        "tls_cert": Key(path(optional=True), ""),
        "tls_key": Key(path(optional=True), ""),
        "client_ca_file": Key(path(optional=True), ""),
        "plain_port": Key(integer(0, 65535), 0),
        "max_message_bytes": Key(integer(128, 268435455), 262144),
        "max_connections": Key(integer(1, 1_000_000), 1000),
        "connect_timeout_secs": Key(number(0.1, 300), 10.0),
        "https_port": Key(integer(0, 65535), 0),
        "amqp_port": Key(integer(0, 65535), 0),
    },
    "storage": {
        "path": Key(path(optional=False), "/var/lib/gatewayd"),
        "time_to_live_secs": Key(integer(1, 2147483647), 7200),
        "commit_interval_ms": Key(integer(1, 60000), 100),
        "commit_max_messages": Key(integer(1, 100000), 256),
        "max_bytes": Key(integer(0, 2**62), 0),
        "min_free_percent": Key(number(0, 90), 10.0),
        "full_policy": Key(choice("drop-oldest", "refuse-new"), "drop-oldest"),
        "reserve_bytes": Key(integer(0, 2**40), 32 * 1024 * 1024),
    },
    "cloud": {
        "url": Key(text(), ""),
        "prefix": Key(text(_is_prefix, 'a topic prefix ending in "/" without + or #'), ""),
        "client_id": Key(text(), ""),
        "ca_file": Key(path(optional=True), ""),
        "cert_file": Key(path(optional=True), ""),
        "key_file": Key(path(optional=True), ""),
        "username": Key(text(), ""),
        "password": Key(text(), ""),
        "inflight_window": Key(integer(1, 65535), 100),
        "keepalive_secs": Key(integer(5, 3600), 30),
        "reconnect_min_secs": Key(number(0, low_open=True), 1.0),
        "reconnect_max_secs": Key(number(0, low_open=True), 60.0),
        "live_share": Key(number(0, 0.9), 0.0),
        "max_refusals": Key(integer(1, 100), 3),
        "max_publish_rate": Key(number(0), 0.0),
        "dns_servers": Key(ip_list(), ()),
        "ledger_interval_secs": Key(number(0.5, 3600), 10.0),
    },
    "control": {
        "socket": Key(path(optional=True), ""),
    },
    "log": {
        "level": Key(choice(*LOG_LEVELS), "info"),
    },
    "auth": {
        "offline_trust_secs": Key(integer(0, 2**31 - 1), 0),
    },
    "metrics": {
        "host": Key(text(is_host, "a host name or IP address"), "127.0.0.1"),
        "port": Key(integer(0, 65535), 0),
    },
    "limits": {
        "twin_updates_per_sec": Key(number(0), LimitsSettings.twin_updates_per_sec),
        "routed_messages_per_sec": Key(number(0), LimitsSettings.routed_messages_per_sec),
        "max_outstanding_per_child": Key(integer(2, 65535),
                                         LimitsSettings.max_outstanding_per_child),
    },
    "modules": {
        "workload_socket": Key(path(optional=True), ""),
        "runner": Key(choice("auto", "process", "systemd"), "auto"),
        "restart_backoff_secs": Key(number(0, 300, low_open=True), 10.0),
        "trust_bundle": Key(path(optional=True), ""),
    },
}


# -- loading ----------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, check and convert the file; any problem is a ConfigError naming file and key."""
    name = os.fspath(path)
    source = Path(name).absolute()
    try:
        doc = _read_toml(source)
        _refuse_unknown_sections(doc)
        values = {
            section: _read_section(doc.get(section, {}), section, keys, source.parent)
            for section, keys in SCHEMA.items()
        }
        return _build(values, source)
    except _Problem as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _read_toml(source: Path) -> dict[str, Any]:
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise _Problem(f"cannot read the configuration file: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Problem(f"not valid TOML: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise _Problem(f"not valid TOML: {exc}") from None  # tomllib names line and column


def _refuse_unknown_sections(doc: Mapping[str, Any]) -> None:
    for section in doc:
        if section not in SCHEMA:
            known = ", ".join(SCHEMA)
            raise _Problem(f"unknown section [{section}] (known: {known})")


def _read_section(
    table: Any, section: str, keys: Mapping[str, Key], base: Path
) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _Problem(f"{section}: expected a table [{section}], got {_show(table)}")
    for key in table:
        if key not in keys:
            raise _Problem(f"unknown key '{section}.{key}' (known: {', '.join(keys)})")
    out: dict[str, Any] = {}
    for key, spec in keys.items():
        if key in table:
            out[key] = _convert(spec, table[key], f"{section}.{key}", base)
        elif spec.default is REQUIRED:
            raise _Problem(f"{section}.{key} is required")
        else:
            out[key] = spec.convert(spec.default, base)
    return out


def _convert(spec: Key, value: Any, where: str, base: Path) -> Any:
    try:
        return spec.convert(value, base)
    except _Expected as exc:
        raise _Problem(f"{where}: expected {exc}, got {_show(value)}") from None


def _show(value: Any) -> str:
    """Quote the offending value the way it looks in TOML, so the operator can find it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _resolve(value: str, base: Path) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


# -- cross-key rules --------------------------------------------------------------------------


def _build(values: dict[str, dict[str, Any]], source: Path) -> Config:
    gateway = GatewaySettings(**values["gateway"])
    storage = _storage(values["storage"])
    control = values["control"]
    if control["socket"] is None:
        control = {"socket": storage.path / "control.sock"}
    return Config(
        gateway=gateway,
        listen=_listen(values["listen"]),
        storage=storage,
        cloud=_cloud(values["cloud"], gateway.id),
        control=ControlSettings(**control),
        log=LogSettings(**values["log"]),
        source=source,
        metrics=MetricsSettings(**values["metrics"]),
        auth=AuthSettings(**values["auth"]),
        limits=LimitsSettings(**values["limits"]),
        modules=_modules(values["modules"], values["listen"]),
    )


def _modules(v: dict[str, Any], listen: dict[str, Any]) -> ModulesSettings:
    """Modules trust the CA that signed the gateway's certificate: by default the ca.pem that
    provisioning writes beside it."""
    if v["trust_bundle"] is None and listen["tls_cert"] is not None:
        beside = listen["tls_cert"].parent / "ca.pem"
        v = {**v, "trust_bundle": beside if beside.is_file() else None}
    _require_file("modules.trust_bundle", v["trust_bundle"])
    return ModulesSettings(**v)


def _listen(v: dict[str, Any]) -> ListenSettings:
    for port in ("port", "https_port", "amqp_port"):
        if v[port] == 0:
            continue
        for key in ("tls_cert", "tls_key"):
            if v[key] is None:
                raise _Problem(
                    f"listen.{key} is required when listen.{port} > 0 "
                    f"(set listen.{port} = 0 to run without that TLS listener)"
                )
    if v["https_port"] and v["https_port"] in (v["port"], v["plain_port"]):
        raise _Problem(f"listen.https_port {v['https_port']} is already listen.port or "
                       "listen.plain_port: each listener needs its own port")
    if v["amqp_port"] and v["amqp_port"] in (v["port"], v["plain_port"], v["https_port"]):
        raise _Problem(f"listen.amqp_port {v['amqp_port']} is already another listener's "
                       "port: each listener needs its own port")
    for key in ("tls_cert", "tls_key", "client_ca_file"):
        _require_file(f"listen.{key}", v[key])
    return ListenSettings(**v)


def _storage(v: dict[str, Any]) -> StorageSettings:
    """The environment wins over the file, as with the Azure IoT Edge hub (containers set it)."""
    override = os.environ.get(STORAGE_ENV, "")
    if override:
        v = {**v, "path": Path(override).absolute()}
    return StorageSettings(**v)


def _cloud(v: dict[str, Any], gateway_id: str) -> CloudSettings:
    if (v["cert_file"] is None) != (v["key_file"] is None):
        raise _Problem("cloud.cert_file and cloud.key_file must be set together (or neither)")
    for key in ("ca_file", "cert_file", "key_file"):
        _require_file(f"cloud.{key}", v[key])
    if v["reconnect_max_secs"] < v["reconnect_min_secs"]:
        raise _Problem(
            f"cloud.reconnect_max_secs: expected a number >= cloud.reconnect_min_secs "
            f"({v['reconnect_min_secs']:g}), got {v['reconnect_max_secs']:g}"
        )
    endpoint = _parse_url(v["url"]) if v["url"] else {}
    return CloudSettings(**{**v, "client_id": v["client_id"] or gateway_id}, **endpoint)


def _parse_url(url: str) -> dict[str, Any]:
    wanted = 'expected "mqtt://host[:port]" or "mqtts://host[:port]"'
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _Problem(f"cloud.url: {wanted}, got {_show(url)} ({exc})") from None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if (
        scheme not in CLOUD_SCHEMES
        or not is_host(host)
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or port == 0
    ):
        raise _Problem(f"cloud.url: {wanted}, got {_show(url)}")
    default_port, tls = CLOUD_SCHEMES[scheme]
    return {"scheme": scheme, "host": host, "port": port or default_port, "tls": tls}


def _require_file(where: str, p: Path | None) -> None:
    if p is not None and not p.is_file():
        what = "is not a regular file" if p.exists() else "does not exist"
        raise _Problem(f"{where}: {p} {what}")
