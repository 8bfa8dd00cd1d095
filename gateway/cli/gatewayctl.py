"""`gatewayctl`: the operator's view of a running gateway, and a config checker.

    gatewayctl status [--json] [--config FILE]   what the daemon is doing now
    gatewayctl config check [FILE]               validate a configuration without starting anything
    gatewayctl dlq list|resend|drop [SEQ|all]    messages the cloud refused, set aside
    gatewayctl children|twin|settings|invoke|send  the cloud side (see gateway/cli/ctl_cloud.py)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gateway.cli import ctl_cloud
from gateway.config import load_config
from gateway.control import request
from gateway.errors import GatewayError

DEFAULT_CONFIG = "/etc/gatewayd/gatewayd.toml"


class _Unreachable(GatewayError):
    exit_code = 69  # EX_UNAVAILABLE


def _ask(config_path: str, cmd: str, *cmd_args: str) -> dict:
    config = load_config(config_path)
    try:
        answer = request(Path(config.control.socket), cmd, *cmd_args)
    except OSError as exc:
        raise _Unreachable(
            f"cannot reach gatewayd at {config.control.socket}: {exc.strerror or exc}; "
            f"is the service running (systemctl status gatewayd) and are you root or in its group?"
        ) from None
    if "error" in answer:
        raise GatewayError(answer["error"])
    return answer


def _dlq(args: argparse.Namespace) -> int:
    answer = _ask(args.config, "dlq", args.action, args.which)
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    elif args.action == "list":
        letters = answer["dead_letters"]
        print(f"{'SEQ':>10}  {'DEVICE':<20} {'REASON':>6} {'BYTES':>7}  REFUSED AT")
        for d in letters:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["refused_at_ms"] / 1000))
            print(f"{d['seq']:>10}  {d['device_id']:<20} {d['reason_code']:>#6x} "
                  f"{d['bytes']:>7}  {at}")
        print(f"{len(letters)} dead letters")
    else:
        print(", ".join(f"{k} {v}" for k, v in answer.items()))
    return 0


def _status(args: argparse.Namespace) -> int:
    answer = _ask(args.config, "status")
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        print(_table(answer))
    return 0


def _table(s: dict) -> str:
    up = s["uplink"]
    since = ""
    if "since" in up:
        since = f" since {time.strftime('%H:%M:%S', time.localtime(up['since']))}"
    backlog = s["backlog"]
    age = backlog["oldest_age_secs"]
    rows = [
        ("gateway", f"{s['gateway_id']} (pid {s['pid']}, up {s['uptime_secs']:.0f} s)"),
        ("uplink", f"{up['state']}{since} {up.get('address', '')} {up.get('last_error', '')}"),
        ("children", f"{len(s['children'])} connected, {s['children_refused']} refused"),
        ("registry", f"version {s['registry_version']}, {s['registry_children']} children"),
        (
            "backlog",
            f"{backlog['messages']} msgs, {backlog['bytes']} bytes"
            + (f", oldest {age:.0f} s" if age is not None else ""),
        ),
        ("expired", str(s["outbox"]["expired"])),
        ("disk free", f"{s['disk']['free_bytes'] // 2**20} MiB"),
        ("written", f"{s['process_write_bytes']} bytes since start"),
    ]
    return "\n".join(f"{k:<10} {v.strip()}" for k, v in rows)


def _config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{config.source}: OK (gateway {config.gateway.id})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatewayctl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="what the running daemon is doing")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--config", default=DEFAULT_CONFIG)
    status.set_defaults(func=_status)
    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a configuration file")
    check.add_argument("file", nargs="?", default=DEFAULT_CONFIG)
    check.set_defaults(func=_config_check)
    dlq = sub.add_parser("dlq", help="messages the cloud refused, set aside (dead letters)")
    dlq.add_argument("action", choices=("list", "resend", "drop"))
    dlq.add_argument("which", nargs="?", default="all", help="a seq, or all (default)")
    dlq.add_argument("--json", action="store_true")
    dlq.add_argument("--config", default=DEFAULT_CONFIG)
    dlq.set_defaults(func=_dlq)
    ctl_cloud.add_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GatewayError as exc:
        print(f"gatewayctl: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
