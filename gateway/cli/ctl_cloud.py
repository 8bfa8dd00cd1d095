"""`gatewayctl` commands against the cloud broker: children, twins, settings, methods, C2D.

    gatewayctl children add GATEWAY DEVICE... [--x509-thumbprint T] [--gateway-host H]
    gatewayctl children list GATEWAY | remove|disable|enable GATEWAY DEVICE...
    gatewayctl twin show DEVICE | twin set DEVICE --desired JSON   (a module: GATEWAY/MODULE)
    gatewayctl settings show GATEWAY | settings set GATEWAY --ttl SECS
    gatewayctl invoke DEVICE METHOD [--payload JSON] [--timeout SECS]  (or GATEWAY/MODULE)
    gatewayctl send DEVICE --payload TEXT [--property k=v ...] [--ttl SECS]
    gatewayctl deploy GATEWAY FILE

Where the broker is: --cloud URL (with --username, --password, --ca-file, --prefix), or
--config FILE to take the cloud section of a gateway's configuration; flags win.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway import identity
from gateway.config import load_config
from gateway.operator import (
    CloudSession,
    CloudTarget,
    OperatorError,
    OperatorUsageError,
    add_children,
    change_children,
    check_new_children,
    connection_string,
    deployment_document,
    empty_registry,
    merge_desired,
    set_ttl,
)
from gateway.upstream import cloud_contract as contract


def _connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cloud broker")
    group.add_argument("--cloud", help="mqtt://host[:port] or mqtts://host[:port]")
    group.add_argument("--config", help="take the broker from this gateway configuration")
    group.add_argument("--username")
    group.add_argument("--password")
    group.add_argument("--ca-file")
    group.add_argument("--prefix")
    group.add_argument("--json", action="store_true", help="machine-readable output")


def _session(args: argparse.Namespace, **options) -> CloudSession:
    hub = ""
    if args.config:
        config = load_config(args.config)
        cloud = config.cloud
        hub = config.gateway.hub_hostname
        if not cloud.enabled and not args.cloud:
            raise OperatorUsageError(f"{args.config} has no cloud.url; give --cloud")
        target = CloudTarget(
            cloud.host, cloud.port, cloud.tls, cloud.prefix, cloud.username, cloud.password,
            str(cloud.ca_file) if cloud.ca_file else None)
        if args.cloud:
            target = CloudTarget.from_url(args.cloud, prefix=target.prefix)
    elif args.cloud:
        target = CloudTarget.from_url(args.cloud)
    else:
        raise OperatorUsageError("say where the cloud broker is: --cloud URL or --config FILE")
    over = {k: getattr(args, k) for k in ("username", "password", "ca_file", "prefix")
            if getattr(args, k) is not None}
    if over:
        target = CloudTarget(**{**target.__dict__, **over})
    args.hub_from_config = hub
    return CloudSession(target, **options)


def _print(args: argparse.Namespace, data: object, rows: list[tuple[str, ...]]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _json_arg(text: str, what: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise OperatorUsageError(f"{what}: not valid JSON ({exc})") from None


# -- children ------------------------------------------------------------------------------------


def _children_add(args: argparse.Namespace) -> int:
    with _Session(args) as cloud:
        hub = args.hub_hostname or args.hub_from_config
        if not hub and not args.x509_thumbprint:
            raise OperatorUsageError("--hub-hostname is needed for the connection strings (the "
                                     "gateway's gateway.hub_hostname), or use --config")
        registries, gateways = cloud.gateways()
        check_new_children(args.gateway, args.devices, registries, gateways)
        doc = registries.get(args.gateway) or empty_registry()
        new, keys = add_children(doc, args.devices, args.x509_thumbprint)
        cloud.put_retained(contract.registry_topic(cloud.prefix, args.gateway), new)
    host = args.gateway_host or args.gateway
    out = [{"deviceId": d, "gateway": args.gateway, "registryVersion": new["version"],
            "connectionString": connection_string(hub, d, keys[d], host) if d in keys else None}
           for d in args.devices]
    rows = [("DEVICE", "CONNECTION STRING")]
    rows += [(o["deviceId"], o["connectionString"] or "x509 (thumbprint registered)")
             for o in out]
    _print(args, out, rows)
    return 0


def _children_list(args: argparse.Namespace) -> int:
    with _Session(args) as cloud:
        doc = cloud.read_json(contract.registry_topic(cloud.prefix, args.gateway))
    if doc is None:
        raise OperatorError(f"gateway {args.gateway} has no registry in the cloud")
    rows = [("DEVICE", "STATUS", "AUTH")]
    rows += [(c["deviceId"], c.get("status", "?"), c.get("auth", {}).get("type", "?"))
             for c in doc.get("children", [])]
    safe = {"version": doc.get("version"), "children": [
        {k: v for k, v in c.items() if k != "auth"} | {"auth": c.get("auth", {}).get("type")}
        for c in doc.get("children", [])]}
    _print(args, safe, rows)
    return 0


def _children_change(args: argparse.Namespace) -> int:
    with _Session(args) as cloud:
        topic = contract.registry_topic(cloud.prefix, args.gateway)
        doc = cloud.read_json(topic)
        if doc is None:
            raise OperatorError(f"gateway {args.gateway} has no registry in the cloud")
        new = change_children(doc, args.devices, args.action)
        cloud.put_retained(topic, new)
    _print(args, {"gateway": args.gateway, "registryVersion": new["version"],
                  "devices": args.devices, "action": args.action},
           [(f"{args.action}: {', '.join(args.devices)} (registry version {new['version']})",)])
    return 0


# -- twins and settings --------------------------------------------------------------------------


def _show_twin(args: argparse.Namespace, topic_of, owner: tuple[str, str]) -> int:
    """Print a twin's two retained halves; `topic_of(prefix, part)` names their topics."""
    with _Session(args) as cloud:
        desired = cloud.read_json(topic_of(cloud.prefix, "desired"))
        reported = cloud.read_json(topic_of(cloud.prefix, "reported"))
    if args.json:
        doc = {owner[0]: owner[1], "desired": desired, "reported": reported}
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"desired   {json.dumps(desired, sort_keys=True)}")
        print(f"reported  {json.dumps(reported, sort_keys=True)}")
    return 0


def _twin_show(args: argparse.Namespace) -> int:
    return _show_twin(
        args, lambda prefix, part: contract.device_twin_topic(prefix, args.device, part),
        ("deviceId", args.device))


def _twin_set(args: argparse.Namespace) -> int:
    patch = _json_arg(args.desired, "--desired")
    if not isinstance(patch, dict):
        raise OperatorUsageError("--desired: expected a JSON object")
    with _Session(args) as cloud:
        topic = contract.device_twin_topic(cloud.prefix, args.device, "desired")
        new = merge_desired(cloud.read_json(topic), patch)
        cloud.put_retained(topic, new)
    _print(args, new, [(f"desired version {new['$version']}: {json.dumps(new, sort_keys=True)}",)])
    return 0


def _settings_show(args: argparse.Namespace) -> int:
    return _show_twin(
        args, lambda prefix, part: contract.gateway_twin_topic(prefix, args.gateway, part),
        ("gateway", args.gateway))


def _settings_set(args: argparse.Namespace) -> int:
    with _Session(args) as cloud:
        topic = contract.gateway_twin_topic(cloud.prefix, args.gateway, "desired")
        new = set_ttl(cloud.read_json(topic), args.ttl)
        cloud.put_retained(topic, new)
    _print(args, new, [(f"{args.gateway}: desired version {new['$version']}, time to live "
                        f"{args.ttl} s",)])
    return 0


# -- modules -------------------------------------------------------------------------------------


def _deploy(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_bytes()
    except OSError as exc:
        raise OperatorUsageError(f"{args.file}: cannot read: {exc.strerror or exc}") from None
    with _Session(args) as cloud:
        topic = contract.agent_topic(cloud.prefix, args.gateway, "desired")
        doc = deployment_document(text, args.file, cloud.read_json(topic))
        cloud.put_retained(topic, doc)
    _print(args, doc, [(f"{args.gateway}: deployment version {doc['version']} published, "
                        f"{len(doc.get('modules', {}))} modules",)])
    return 0


# -- methods and messages ------------------------------------------------------------------------


def _invoke(args: argparse.Namespace) -> int:
    payload = json.dumps(_json_arg(args.payload, "--payload")).encode()
    with _Session(args) as cloud:
        status, body = cloud.invoke(args.device, args.method, payload, args.timeout)
    try:
        answer = json.loads(body) if body else None
    except ValueError:
        answer = body.decode(errors="replace")
    _print(args, {"status": status, "payload": answer},
           [(f"status {status}", json.dumps(answer))])
    return 0 if 200 <= status < 300 else 1


def _send(args: argparse.Namespace) -> int:
    if identity.is_module(args.device):
        raise OperatorUsageError(f"{args.device} is a module: modules get no cloud-to-device "
                                 f"messages (as in IoT Hub); route messages to its inputs")
    props = []
    for item in args.property or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OperatorUsageError(f"--property: expected key=value, got {item!r}")
        props.append((key, value))
    with _Session(args) as cloud:
        cloud.send(args.device, args.payload.encode(), props, args.ttl)
    _print(args, {"device": args.device, "sent": True}, [(f"sent to {args.device}",)])
    return 0


class _Session:
    """`with _Session(args) as cloud:` closes the connection whatever happens."""

    def __init__(self, args: argparse.Namespace, **options) -> None:
        self.cloud = _session(args, **options)

    def __enter__(self) -> CloudSession:
        return self.cloud

    def __exit__(self, *exc) -> None:
        self.cloud.close()


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the cloud-side commands on gatewayctl's parser."""
    children = sub.add_parser("children", help="child devices of a gateway (in the cloud)")
    csub = children.add_subparsers(dest="children_command", required=True)
    add = csub.add_parser("add", help="register children and print their connection strings")
    add.add_argument("gateway")
    add.add_argument("devices", nargs="+", metavar="DEVICE")
    add.add_argument("--x509-thumbprint", help="register X.509 children with this thumbprint")
    add.add_argument("--gateway-host", help="address children dial (default: the gateway id)")
    add.add_argument("--hub-hostname", help="host name in SAS tokens (gateway.hub_hostname)")
    _connection(add)
    add.set_defaults(func=_children_add)
    lst = csub.add_parser("list", help="children of a gateway")
    lst.add_argument("gateway")
    _connection(lst)
    lst.set_defaults(func=_children_list)
    for action in ("remove", "disable", "enable"):
        cmd = csub.add_parser(action, help=f"{action} children")
        cmd.add_argument("gateway")
        cmd.add_argument("devices", nargs="+", metavar="DEVICE")
        _connection(cmd)
        cmd.set_defaults(func=_children_change, action=action)

    twin = sub.add_parser("twin", help="a child's twin, or a module's (GATEWAY/MODULE)")
    tsub = twin.add_subparsers(dest="twin_command", required=True)
    show = tsub.add_parser("show")
    show.add_argument("device")
    _connection(show)
    show.set_defaults(func=_twin_show)
    tset = tsub.add_parser("set", help="merge a desired patch (null deletes)")
    tset.add_argument("device")
    tset.add_argument("--desired", required=True, help="JSON object")
    _connection(tset)
    tset.set_defaults(func=_twin_set)

    settings = sub.add_parser("settings", help="a gateway's hub settings (its desired twin)")
    ssub = settings.add_subparsers(dest="settings_command", required=True)
    sshow = ssub.add_parser("show")
    sshow.add_argument("gateway")
    _connection(sshow)
    sshow.set_defaults(func=_settings_show)
    sset = ssub.add_parser("set")
    sset.add_argument("gateway")
    sset.add_argument("--ttl", type=int, required=True, help="timeToLiveSecs, 1..2147483647")
    _connection(sset)
    sset.set_defaults(func=_settings_set)

    invoke = sub.add_parser("invoke", help="call a direct method on a child or a module")
    invoke.add_argument("device")
    invoke.add_argument("method")
    invoke.add_argument("--payload", default="null", help="JSON")
    invoke.add_argument("--timeout", type=float, default=30.0)
    _connection(invoke)
    invoke.set_defaults(func=_invoke)

    deploy = sub.add_parser("deploy", help="publish a gateway's module deployment, checked first")
    deploy.add_argument("gateway")
    deploy.add_argument("file", help="the deployment document (JSON)")
    _connection(deploy)
    deploy.set_defaults(func=_deploy)

    send = sub.add_parser("send", help="send a cloud-to-device message")
    send.add_argument("device")
    send.add_argument("--payload", required=True)
    send.add_argument("--property", action="append", metavar="KEY=VALUE")
    send.add_argument("--ttl", type=int, help="time to live in seconds (default 3600)")
    _connection(send)
    send.set_defaults(func=_send)


if __name__ == "__main__":
    sys.exit("use gatewayctl")
