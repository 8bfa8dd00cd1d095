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

from gateway.config import load_config
from gateway.operator import (
    CloudSession,
    CloudTarget,
    Operator,
    OperatorUsageError,
    parse_json,
    parse_properties,
)


def _connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cloud broker")
    group.add_argument("--cloud", help="mqtt://host[:port] or mqtts://host[:port]")
    group.add_argument("--config", help="take the broker from this gateway configuration")
    group.add_argument("--username")
    group.add_argument("--password")
    group.add_argument("--ca-file")
    group.add_argument("--prefix")
    group.add_argument("--json", action="store_true", help="machine-readable output")


def cloud_target(args: argparse.Namespace) -> tuple[CloudTarget, str]:
    """Where the broker is, and the hub host name from --config (or ""); flags win."""
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
            if getattr(args, k, None) is not None}
    if over:
        target = CloudTarget(**{**target.__dict__, **over})
    return target, hub


def _operator(args: argparse.Namespace) -> Operator:
    target, hub = cloud_target(args)
    return Operator(target, hub_hostname=hub)


class _Session:
    """`with _Session(args) as cloud:` the bare CloudSession, closed whatever happens (for the
    commands that read with the session's own functions, as fleet status and verify do)."""

    def __init__(self, args: argparse.Namespace, **options) -> None:
        self.cloud = CloudSession(cloud_target(args)[0], **options)

    def __enter__(self) -> CloudSession:
        return self.cloud

    def __exit__(self, *exc) -> None:
        self.cloud.close()


def _print(args: argparse.Namespace, data: object, rows: list[tuple[str, ...]]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- children ------------------------------------------------------------------------------------


def _children_add(args: argparse.Namespace) -> int:
    with _operator(args) as op:
        added = op.add_children(args.gateway, args.devices, x509_thumbprint=args.x509_thumbprint,
                                gateway_host=args.gateway_host, hub_hostname=args.hub_hostname)
    out = [{"deviceId": n.device_id, "gateway": n.gateway, "registryVersion": n.registry_version,
            "connectionString": n.connection_string} for n in added]
    rows = [("DEVICE", "CONNECTION STRING")]
    rows += [(o["deviceId"], o["connectionString"] or "x509 (thumbprint registered)")
             for o in out]
    _print(args, out, rows)
    return 0


def _children_list(args: argparse.Namespace) -> int:
    with _operator(args) as op:
        registry = op.children(args.gateway)
    rows = [("DEVICE", "STATUS", "AUTH")]
    rows += [(c.device_id, c.status, c.auth) for c in registry.children]
    safe = {"version": registry.version, "children": [
        {"deviceId": c.device_id, "status": c.status, "auth": c.auth} for c in registry.children]}
    _print(args, safe, rows)
    return 0


def _children_change(args: argparse.Namespace) -> int:
    with _operator(args) as op:
        version = op.change_children(args.gateway, args.devices, args.action)
    _print(args, {"gateway": args.gateway, "registryVersion": version,
                  "devices": args.devices, "action": args.action},
           [(f"{args.action}: {', '.join(args.devices)} (registry version {version})",)])
    return 0


# -- twins and settings --------------------------------------------------------------------------


def _show_twin(args: argparse.Namespace, twin, owner: tuple[str, str]) -> int:
    if args.json:
        doc = {owner[0]: owner[1], "desired": twin.desired, "reported": twin.reported}
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"desired   {json.dumps(twin.desired, sort_keys=True)}")
        print(f"reported  {json.dumps(twin.reported, sort_keys=True)}")
    return 0


def _twin_show(args: argparse.Namespace) -> int:
    with _operator(args) as op:
        twin = op.twin(args.device)
    return _show_twin(args, twin, ("deviceId", args.device))


def _twin_set(args: argparse.Namespace) -> int:
    patch = parse_json(args.desired, "--desired")
    with _operator(args) as op:
        new = op.set_desired(args.device, patch)
    _print(args, new, [(f"desired version {new['$version']}: {json.dumps(new, sort_keys=True)}",)])
    return 0


def _settings_show(args: argparse.Namespace) -> int:
    with _operator(args) as op:
        twin = op.settings(args.gateway)
    return _show_twin(args, twin, ("gateway", args.gateway))


def _settings_set(args: argparse.Namespace) -> int:
    with _operator(args) as op:
        new = op.set_ttl(args.gateway, args.ttl)
    _print(args, new, [(f"{args.gateway}: desired version {new['$version']}, time to live "
                        f"{args.ttl} s",)])
    return 0


# -- modules -------------------------------------------------------------------------------------


def _deploy(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_bytes()
    except OSError as exc:
        raise OperatorUsageError(f"{args.file}: cannot read: {exc.strerror or exc}") from None
    with _operator(args) as op:
        doc = op.deploy(args.gateway, text, args.file)
    _print(args, doc, [(f"{args.gateway}: deployment version {doc['version']} published, "
                        f"{len(doc.get('modules', {}))} modules",)])
    return 0


# -- methods and messages ------------------------------------------------------------------------


def _invoke(args: argparse.Namespace) -> int:
    payload = parse_json(args.payload, "--payload")
    with _operator(args) as op:
        result = op.invoke(args.device, args.method, payload, args.timeout)
    _print(args, {"status": result.status, "payload": result.payload},
           [(f"status {result.status}", json.dumps(result.payload))])
    return 0 if result.ok else 1


def _send(args: argparse.Namespace) -> int:
    props = parse_properties(args.property or [])
    with _operator(args) as op:
        op.send(args.device, args.payload.encode(), props, args.ttl)
    _print(args, {"device": args.device, "sent": True}, [(f"sent to {args.device}",)])
    return 0


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
