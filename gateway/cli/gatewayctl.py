"""`gatewayctl`: the operator's view of a running gateway, and a config checker.

    gatewayctl status [--json] [--config FILE]   what the daemon is doing now
    gatewayctl config check [FILE]               validate a configuration without starting anything
    gatewayctl dlq list|resend|drop [SEQ|all]    messages the cloud refused, set aside
    gatewayctl children|twin|settings|invoke|send  the cloud side (see gateway/cli/ctl_cloud.py)
    gatewayctl fleet status|verify             the fleet from the cloud (gateway/cli/ctl_fleet.py)
    gatewayctl console --cloud URL             the web console (gateway/cli/ctl_console.py)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gateway.cli import ctl_cloud, ctl_console, ctl_fleet, exits
from gateway.config import load_config
from gateway.daemon.control import request
from gateway.errors import GatewayError, UnavailableError

DEFAULT_CONFIG = "/etc/gatewayd/gatewayd.toml"


def _ask(config_path: str, cmd: str, *cmd_args: str) -> dict:
    config = load_config(config_path)
    try:
        answer = request(Path(config.control.socket), cmd, *cmd_args)
    except OSError as exc:
        raise UnavailableError(
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
    if args.watch:
        return _watch(args)
    answer = _ask(args.config, "status")
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        print(_table(answer))
    return 0


def _watch(args: argparse.Namespace) -> int:
    """Refresh the table in place; while a backlog drains, show a bar with rate and time left."""
    peak = 0
    shown = 0
    try:
        while args.count == 0 or shown < args.count:
            answer = _ask(args.config, "status")
            backlog = answer["backlog"]["messages"]
            peak = backlog if backlog > peak or backlog == 0 else peak
            screen = _table(answer)
            if answer["rates"]["out_msgs"] > 0 and backlog and peak:
                screen += "\n" + _progress(peak, backlog, answer)
            sys.stdout.write("\x1b[H\x1b[2J" + screen + "\n")
            sys.stdout.flush()
            shown += 1
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return 0


def _progress(peak: int, backlog: int, s: dict, width: int = 30) -> str:
    done = (peak - backlog) / peak
    filled = int(done * width)
    left = s["projections"]["drain_secs"]
    eta = _duration(left) if left is not None else "?"
    return (f"draining  [{'#' * filled}{'.' * (width - filled)}] {done * 100:3.0f}%  "
            f"{s['rates']['out_msgs']:.0f} msg/s, {backlog} left, {eta} to go")


def _duration(secs: float | None) -> str:
    if secs is None:
        return "-"
    secs = int(secs)
    if secs >= 86400:
        return f"{secs // 86400} d {secs % 86400 // 3600} h"
    return f"{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}"


def _table(s: dict) -> str:
    up = s["uplink"]
    since = ""
    if up.get("since"):
        since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(up['since']))}"
    backlog = s["backlog"]
    age = backlog["oldest_age_secs"]
    by_priority = ", ".join(f"p{p}: {n}" for p, n in backlog.get("by_priority", {}).items())
    rates, proj = s.get("rates", {}), s.get("projections", {})
    rows = [
        ("gateway", f"{s['gateway_id']} (pid {s['pid']}, up {_duration(s['uptime_secs'])})"),
        ("uplink", f"{up['state']}{since} {up.get('address', '')} {up.get('last_error', '')}"),
        ("children", f"{len(s['children'])} connected, {s['children_refused']} refused"
         + _per_listener(s.get("connections") or {})),
        ("backlog", f"{backlog['messages']} msgs, {backlog['bytes']} bytes"
         + (f", oldest {_duration(age)}" if age is not None else "")
         + (f" ({by_priority})" if by_priority else "")),
        ("rates", f"in {rates.get('in_msgs', 0):.0f} msg/s, out {rates.get('out_msgs', 0):.0f} "
         f"msg/s"),
        ("drain", f"{_duration(proj.get('drain_secs'))} left at this rate"),
        ("disk", f"{s['disk']['free_bytes'] // 2**20} MiB free of "
         f"{s['disk']['total_bytes'] // 2**20} MiB; store {s.get('store_bytes', 0) // 2**20} MiB;"
         f" full in {_duration(proj.get('disk_full_secs'))} at this rate"),
        ("expired", f"{s['outbox']['expired']}; refused by the cloud "
         f"{up.get('refused', 0)}; dead letters {s.get('dead_letters', 0)}"),
        ("registry", f"version {s['registry_version']}, {s['registry_children']} children"),
        ("settings", f"twin version {s.get('settings_version', 0)}, time to live "
         f"{s.get('time_to_live_secs', '?')} s, {len(s.get('routes', {}))} routes"),
        ("written", f"{s['process_write_bytes'] // 1024} KiB since start"),
        *_module_rows(s.get("modules") or {}),
    ]
    return "\n".join(f"{k:<10} {v.strip()}" for k, v in rows)


def _per_listener(connections: dict) -> str:
    """Open connections per head when there is more than one (tls, plain, mqtt-ws)."""
    if len(connections) < 2:
        return ""
    return " (" + ", ".join(f"{name} {n}" for name, n in connections.items()) + ")"


def _module_rows(agent: dict) -> list[tuple[str, str]]:
    """One line for the deployment, one per module: its state, exit code and restarts."""
    modules = agent.get("modules") or {}
    if not modules and agent.get("deployment_version", -1) < 0:
        return []
    workload = agent.get("workload") or {}
    rows = [("modules", f"deployment version {agent.get('deployment_version')}, "
                        f"{len(modules)} modules"
                        + (f"; workload API: {workload.get('signed', 0)} signed, "
                           f"{workload.get('refused', 0)} refused" if workload else ""))]
    for name, m in sorted(modules.items()):
        exit_code = m.get("exitCode")
        rows.append((f"  {name}", f"{m.get('runtimeStatus', '?')}, restarts "
                                  f"{m.get('restartCount', 0)}"
                                  + (f", last exit {exit_code}" if exit_code is not None else "")))
    return rows


def _config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{config.source}: OK (gateway {config.gateway.id})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatewayctl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="what the running daemon is doing")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.add_argument("--interval", type=float, default=1.0, help="--watch refresh, seconds")
    status.add_argument("--count", type=int, default=0, help="--watch: stop after N screens")
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
    ctl_fleet.add_commands(sub)
    ctl_console.add_commands(sub)
    args = parser.parse_args(argv)
    return exits.run("gatewayctl", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
