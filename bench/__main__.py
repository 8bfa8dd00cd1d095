"""`python -m bench run [--quick]`: every scenario of issue 7, gatewayd and its peers alternating.

Writes report.json (every round's figures), report.md (medians and ratios) and the PNG plots into
--out (default bench-results/), and prints the table.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import emulated, report, scenarios, slowflash
from bench.systems import thingsboard_gateway
from tests.support.blockdev import FILESYSTEMS, LoopFilesystem

RELAY_KINDS = ("gatewayd", "paho-floor", "mosquitto", "mosquitto-autosave1")
# the heads (issue 15): the same daemon with its children on MQTT/TLS, MQTT over WebSocket or
# AMQP 1.0 (5671)
HEAD_KINDS = ("gatewayd-tls", "gatewayd-ws", "gatewayd-amqp")
WEAR_KINDS = ("gatewayd", "gatewayd-rocksdb-defaults", "mosquitto", "mosquitto-autosave1")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the scenarios and write the report")
    run.add_argument("--quick", action="store_true", help="small sizes, one round (CI, smoke)")
    run.add_argument("--rounds", type=int, help="rounds of every scenario (default 3, quick 1)")
    run.add_argument("--outage", type=int, help="messages in the outage (default 1,000,000)")
    run.add_argument("--startup", type=int, nargs="*",
                     help="stored backlogs to start with (default 10^4 10^5 10^6)")
    run.add_argument("--scenarios", nargs="*",
                     default=["relay", "outage", "wear", "startup", "slowflash"])
    run.add_argument("--relay", type=int, help="messages per relay run (default 20,000)")
    run.add_argument("--systems", nargs="*", help="only these systems (default: all installed)")
    run.add_argument("--children", type=int, nargs="*", help="relay child counts (1 10 100)")
    run.add_argument("--heads", action="store_true",
                     help="relay also through the MQTT/TLS, MQTT-over-WebSocket and AMQP heads")
    run.add_argument("--wear-secs", type=int, help="seconds of each 100 msg/s wear run (20)")
    run.add_argument("--fs", choices=sorted(FILESYSTEMS), default="default",
                     help="the wear runs' filesystem: default (ext4 with a journal), image (the "
                          "Pi image's root: no journal, noatime,commit=60), image-journal")
    run.add_argument("--flush-ms", type=int, nargs="*",
                     help="slow-flash delays per fsync in ms (default 0 5 20 50)")
    run.add_argument("--storms", nargs="*", choices=slowflash.STORMS,
                     help="slow-flash storms (default twin routed none)")
    run.add_argument("--slowflash-secs", type=float, help="seconds of each slow-flash phase (6)")
    run.add_argument("--out", type=Path, default=Path("bench-results"))
    run.add_argument("--baseline", type=Path, metavar="DIR",
                     help="another checkout of gatewayd (e.g. a git worktree of the parent "
                          "commit), measured as system gatewayd-baseline in the same rounds")
    run.add_argument("--arm64-root", type=Path, metavar="ROOT",
                     help="run gatewayd and mosquitto in this arm64 root under qemu-user "
                          "(made by bench/arm64-root.sh); read the ratios only")
    again = sub.add_parser("report", help="write report.md and the plots again from report.json")
    again.add_argument("dirs", type=Path, nargs="+", help="result directories to merge")
    again.add_argument("--out", type=Path, default=Path("bench-results"))
    return p.parse_args(argv)


def merged(dirs: list[Path]) -> dict:
    """Several runs' report.json as one (e.g. the relay and the million-message outage)."""
    out: dict = {}
    for d in dirs:
        data = json.loads((d / "report.json").read_text())
        for key, value in data.items():
            if isinstance(value, dict) and value and key not in ("sizes", "machine"):
                out[key] = value
            else:
                out.setdefault(key, value)
    for key in ("relay", "outage", "wear", "startup", "slowflash"):
        out.setdefault(key, {})
    return out


def sizes(args: argparse.Namespace) -> dict:
    quick = args.quick
    return {
        "rounds": args.rounds or (1 if quick else 3),
        "relay": 1000 if quick else (args.relay or 20000),
        "children": args.children or ([10] if quick else [1, 10, 100]),
        "outage": args.outage or (2000 if quick else 1_000_000),
        "wear": 2000 if quick else 200_000,
        "wear_rate_secs": args.wear_secs or (2 if quick else 20),
        "startup": args.startup or ([1000] if quick else [10_000, 100_000, 1_000_000]),
        "flush_ms": args.flush_ms or list(slowflash.FLUSH_MS),
        "storms": args.storms or list(slowflash.STORMS),
        "slowflash_secs": args.slowflash_secs or (3 if quick else 6),
        "wear_fs": args.fs,
    }


def attempt(fn, *args, **kwargs) -> dict:
    """One run; a failure is recorded with its reason instead of losing the rounds already run."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure of a system under test is a result
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def rotate(kinds: tuple[str, ...], r: int) -> list[str]:
    """Alternate who goes first in each round, so no system always runs on a warmer machine."""
    return list(kinds[r % len(kinds):] + kinds[:r % len(kinds)])


def kinds(base: tuple[str, ...], args: argparse.Namespace) -> tuple[str, ...]:
    """The systems of a scenario: the ThingsBoard gateway when it is installed, and only
    those asked for with --systems."""
    found = base + (("thingsboard-gateway",) if thingsboard_gateway() else ())
    if args.baseline is not None and "gatewayd" in base:
        found += ("gatewayd-baseline",)
    return tuple(k for k in found if not args.systems or k in args.systems)


def compile_bytecode(trees: list[Path]) -> None:
    """gatewayd runs from compiled bytecode, as the .deb's pip install leaves it: without it
    (PYTHONDONTWRITEBYTECODE, or a source tree nobody compiled) every start compiles each
    module again and the idle RSS carries about 1 MiB of that compiler's garbage."""
    for tree in trees:
        compileall.compile_dir(tree / "gateway", quiet=1)


def check_baseline(tree: Path) -> None:
    """The baseline must really run its own tree's code: asked the way it is started (its tree
    as the cwd and on PYTHONPATH), the interpreter says where it finds `gateway`."""
    found = subprocess.run(
        [sys.executable, "-c", "import gateway; print(gateway.__file__)"], cwd=tree,
        env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True, text=True)
    where = Path(found.stdout.strip() or "?").resolve()
    if found.returncode != 0 or tree not in where.parents:
        raise SystemExit(f"bench: --baseline {tree} would run {where} instead of its own "
                         f"gateway/ ({found.stderr.strip()[-200:]}); pass a checkout of the "
                         "project")


def run(args: argparse.Namespace) -> dict:
    cfg = sizes(args)
    if args.baseline is not None:
        scenarios.BASELINE["tree"] = args.baseline.resolve()
        check_baseline(scenarios.BASELINE["tree"])
    compile_bytecode([Path(__file__).resolve().parent.parent, *scenarios.BASELINE.values()])
    work = Path(tempfile.mkdtemp(prefix="gwbench"))
    rounds: dict = {"sizes": cfg, "machine": report.machine(), "relay": {}, "outage": {},
                    "wear": {}, "startup": {}, "slowflash": {}}
    for r in range(cfg["rounds"]):
        if "relay" in args.scenarios:
            for n in cfg["children"]:
                relay_kinds = RELAY_KINDS + (HEAD_KINDS if args.heads or set(
                    args.systems or ()) & set(HEAD_KINDS) else ())
                for kind in rotate(kinds(relay_kinds, args), r):
                    figures = attempt(scenarios.relay, kind, work / f"relay{r}-{n}-{kind}", n,
                                      cfg["relay"])
                    rounds["relay"].setdefault(str(n), {}).setdefault(kind, []).append(figures)
                    print(f"round {r} relay {n} children {kind}: {report.short(figures)}",
                          flush=True)
        if "outage" in args.scenarios:
            # mosquitto's bridge drains the same outage (issue 18); it is not killed -9
            # between ingest and drain: with its default autosave that loses the whole queue
            outage_kinds = [k for k in kinds(("gatewayd", "paho-floor", "mosquitto"), args)
                            if k != "thingsboard-gateway"]
            for kind in rotate(tuple(outage_kinds), r):
                figures = attempt(scenarios.outage, kind, work / f"outage{r}-{kind}", cfg["outage"])
                rounds["outage"].setdefault(kind, []).append(figures)
                print(f"round {r} outage {kind}: {report.short(figures)}", flush=True)
        if "wear" in args.scenarios and os.geteuid() == 0:
            for kind in rotate(kinds(WEAR_KINDS, args), r):
                for label, fn in wear_runs(cfg):
                    fs = LoopFilesystem(work / f"wear{r}-{kind}-{label}", size_mib=1024,
                                        profile=args.fs)
                    try:
                        figures = attempt(fn, kind, work / f"wear{r}-{kind}-{label}", fs)
                    finally:
                        fs.close()
                    rounds["wear"].setdefault(label, {}).setdefault(kind, []).append(figures)
                    print(f"round {r} wear {label} {kind}: {report.short(figures)}",
                          flush=True)
        if "slowflash" in args.scenarios:
            for ms, storm, link in slowflash.runs(cfg["flush_ms"], cfg["storms"]):
                name = slowflash.label(storm, link)
                figures = attempt(slowflash.slow_flash, work / f"slowflash{r}-{ms}-{name}", ms,
                                  storm, link, cfg["slowflash_secs"])
                rounds["slowflash"].setdefault(str(ms), {}).setdefault(name, []).append(figures)
                print(f"round {r} slowflash {ms} ms {name}: {report.short(figures)}", flush=True)
    if "startup" in args.scenarios:
        for count in cfg["startup"]:
            for _ in range(cfg["rounds"]):
                figures = attempt(scenarios.startup, work / f"startup-{count}", count)
                rounds["startup"].setdefault(str(count), []).append(figures)
                print(f"startup {count}: {report.short(figures)}", flush=True)
    return rounds


def wear_runs(cfg: dict) -> list:
    n, secs = cfg["wear"], cfg["wear_rate_secs"]
    return [
        ("online-full", lambda k, d, fs: scenarios.wear_online(k, d, n, fs)),
        ("online-100", lambda k, d, fs: scenarios.wear_online(k, d, 100 * secs, fs, rate=100)),
        ("offline-full", lambda k, d, fs: scenarios.outage(k, d, n, fs)),
        # an outage that fits in the outbox's memtable (8 MiB): nothing reaches an SST file
        ("offline-full-20k", lambda k, d, fs: scenarios.outage(k, d, max(n // 10, 1000), fs)),
        ("offline-100", lambda k, d, fs: scenarios.outage(k, d, 100 * secs, fs, rate=100)),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    started = time.time()
    if args.command == "report":
        rounds = merged(args.dirs)
    elif args.arm64_root is not None:
        emulated.check(args.arm64_root)
        scenarios.EMULATED["root"] = args.arm64_root.resolve()
        with emulated.bound(args.arm64_root):
            rounds = run(args)
        rounds["emulated_arm64"] = True
    else:
        rounds = run(args)
    if args.command != "report":
        rounds["elapsed_secs"] = round(time.time() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(rounds, indent=1, default=str))
    table = report.table(rounds)
    (args.out / "report.md").write_text(table)
    report.plots(rounds, args.out)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
