"""Medians, ratios and plots from the rounds the harness recorded."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import psutil


def machine() -> dict:
    freq = psutil.cpu_freq()
    return {"cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(),
            "cpu_mhz": round(freq.max or freq.current) if freq else None,
            "memory_mib": psutil.virtual_memory().total // 2**20,
            "processor": _cpu_model()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def short(figures: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, (int, float)))


def median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def _first(*values: float | None) -> float | None:
    """The first value that was measured (0 is a measurement, None is not)."""
    return next((v for v in values if v is not None), None)


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}"


def table(rounds: dict) -> str:
    out = [f"Medians of {rounds['sizes']['rounds']} round(s); sizes {rounds['sizes']}.", ""]
    if rounds.get("emulated_arm64"):
        out += ["The systems ran in an arm64 root under qemu-user (--arm64-root): read the "
                "ratios only; rates, CPU and RSS include the emulator.", ""]
    if rounds["relay"]:
        out += ["### Online relay (QoS 1, 200-byte JSON, window 100)", "",
                "| children | system | msg/s | PUBACK p50 ms | p99 ms | CPU µs/msg | peak RSS MiB "
                "| idle RSS MiB | gatewayd/system msg/s |", "|---|---|---|---|---|---|---|---|---|"]
        for n, kinds in rounds["relay"].items():
            gw = median(kinds.get("gatewayd", []), "msgs_per_sec")
            for kind, runs in kinds.items():
                rate = median(runs, "msgs_per_sec")
                out.append(f"| {n} | {kind} | {_f(rate, 4)} | {_f(median(runs, 'puback_p50_ms'))} "
                           f"| {_f(median(runs, 'puback_p99_ms'))} "
                           f"| {_f(median(runs, 'cpu_us_per_msg'))} "
                           f"| {_f(median(runs, 'peak_rss_mib'))} "
                           f"| {_f(median(runs, 'idle_rss_mib'))} | {_ratio(gw, rate)} |")
        out.append("")
    if rounds["outage"]:
        out += [f"### Outage and drain ({rounds['sizes']['outage']:,} messages)", "",
                "| system | ingest msg/s | start-up with backlog s | drain msg/s | time to empty s "
                "| peak RSS MiB | store MiB | gatewayd/system drain |",
                "|---|---|---|---|---|---|---|---|"]
        gw = median(rounds["outage"].get("gatewayd", []), "drain_msgs_per_sec")
        for kind, runs in rounds["outage"].items():
            drain = median(runs, "drain_msgs_per_sec")
            out.append(f"| {kind} | {_f(median(runs, 'ingest_msgs_per_sec'), 4)} "
                       f"| {_f(median(runs, 'startup_secs'))} | {_f(drain, 4)} "
                       f"| {_f(median(runs, 'time_to_empty_secs'))} "
                       f"| {_f(median(runs, 'peak_rss_mib'))} | {_f(median(runs, 'store_mib'))} "
                       f"| {_ratio(gw, drain)} |")
        out.append("")
    if rounds["wear"]:
        fs = rounds["sizes"].get("wear_fs", "default")
        out += ["### Wear: store-device bytes written per payload byte (own loop device)", "",
                f"Filesystem: ext4 `{fs}` (tests/support/blockdev.py FILESYSTEMS).", "",
                "| run | system | device B / payload B | ingest part | drain part "
                "| flushes/s (ingest or online) | flushes/s drain |",
                "|---|---|---|---|---|---|---|"]
        for label, kinds in rounds["wear"].items():
            for kind, runs in kinds.items():
                total = _first(median(runs, "wear_online"), median(runs, "wear_offline"))
                flushes = _first(median(runs, "flushes_per_sec"),
                                 median(runs, "flushes_per_sec_ingest"))
                out.append(f"| {label} | {kind} | {_f(total)} | {_f(median(runs, 'wear_ingest'))} "
                           f"| {_f(median(runs, 'wear_drain'))} | {_f(flushes)} "
                           f"| {_f(median(runs, 'flushes_per_sec_drain'))} |")
        out.append("")
    if rounds.get("slowflash"):
        out += slowflash_table(rounds)
    if rounds["startup"]:
        out += ["### Start-up to READY with a stored backlog (gatewayd, cloud unreachable)", "",
                "| stored messages | start-up s | µs per stored message | peak RSS MiB |",
                "|---|---|---|---|"]
        for count, runs in rounds["startup"].items():
            out.append(f"| {int(count):,} | {_f(median(runs, 'startup_secs'))} "
                       f"| {_f(median(runs, 'us_per_stored_msg'))} "
                       f"| {_f(median(runs, 'peak_rss_mib'))} |")
        out.append("")
    return "\n".join(out)


def _ms(runs: list[dict], key: str) -> str:
    """A latency percentile; "never" when a median run had that share of PUBACKs missing."""
    values = [r.get(key) for r in runs if "error" not in r]
    if not values:
        return "–"
    finite = sorted(v for v in values if v is not None)
    if len(finite) * 2 <= len(values):
        return "never"
    value = statistics.median(finite)
    return f"{value:.0f}" if value >= 100 else _f(value)


def slowflash_table(rounds: dict) -> list[str]:
    """Issue 13: the bystander's PUBACKs while another child storms, per flush latency."""
    secs = rounds["sizes"].get("slowflash_secs")
    out = [f"### Slow flash: bystander A at 100 msg/s for {secs} s while child B storms", "",
           "| flush ms | storm | link | A PUBACKs kept | A p50 ms | A p99 ms | B served /s "
           "| flushes/s | device B / payload B |", "|---|---|---|---|---|---|---|---|---|"]
    for ms, labels in rounds["slowflash"].items():
        for name, runs in labels.items():
            storm, link = name.rsplit("-", 1)
            errors = [r["error"] for r in runs if "error" in r]
            if len(errors) == len(runs):
                out.append(f"| {ms} | {storm} | {link} | error: {errors[0][:80]} "
                           f"| | | | | |")
                continue
            kept = median(runs, "bystander_acked")
            sent = median(runs, "bystander_sent")
            out.append(f"| {ms} | {storm} | {link} | {_f(kept, 4)}/{_f(sent, 4)} "
                       f"| {_ms(runs, 'bystander_p50_ms')} | {_ms(runs, 'bystander_p99_ms')} "
                       f"| {_f(median(runs, 'storm_per_sec'), 4) if storm != 'none' else '–'} "
                       f"| {_f(median(runs, 'flushes_per_sec'))} "
                       f"| {_f(median(runs, 'device_per_payload_byte'))} |")
    out.append("")
    return out


def plots(rounds: dict, out: Path) -> None:
    """drain.png: messages acknowledged per second during the drain; wear.png: device bytes
    against payload bytes. Skipped (with a line saying so) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plots")
        return
    if rounds.get("slowflash"):
        slowflash_plot(plt, rounds["slowflash"], out)
    runs = rounds["outage"].get("gatewayd") or []
    if runs:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for i, run in enumerate(runs):
            line = run.get("drain_timeline") or []
            xs, ys = [], []
            for (t0, n0), (t1, n1) in zip(line, line[1:], strict=False):
                if t1 > t0:
                    xs.append(t1)
                    ys.append((n1 - n0) / (t1 - t0))
            ax.plot(xs, ys, label=f"round {i}")
        floor = median(rounds["outage"].get("paho-floor", []), "drain_msgs_per_sec")
        if floor:
            ax.axhline(floor, color="grey", linestyle="--", label="paho floor")
        ax.set_xlabel("seconds since the cloud came back")
        ax.set_ylabel("messages acknowledged / s")
        ax.set_title("gatewayd drain after the outage")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "drain.png", dpi=100)
        plt.close(fig)
    if rounds["wear"]:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        labels = list(rounds["wear"])
        kinds = sorted({k for v in rounds["wear"].values() for k in v})
        width = 0.8 / max(1, len(kinds))
        for j, kind in enumerate(kinds):
            values = []
            for label in labels:
                runs = rounds["wear"][label].get(kind, [])
                values.append(_first(median(runs, "wear_online"),
                                     median(runs, "wear_offline")) or 0)
            ax.bar([i + j * width for i in range(len(labels))], values, width, label=kind)
        ax.set_xticks([i + width * (len(kinds) - 1) / 2 for i in range(len(labels))], labels)
        ax.set_yscale("log")
        ax.set_ylabel("device bytes written / payload byte")
        ax.set_title("store-device writes per payload byte (log scale)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "wear.png", dpi=100)
        plt.close(fig)


def slowflash_plot(plt, data: dict, out: Path) -> None:
    """slowflash.png: the bystander's PUBACKs kept and its p99, against the flush latency.

    A p99 that never came (more than 1% of PUBACKs missing) is drawn at the top of the axis."""
    flush = sorted(data, key=int)
    names = sorted({n for v in data.values() for n in v})
    fig, (kept_ax, p99_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    never = 10_000.0
    for name in names:
        xs = [int(ms) for ms in flush if data[ms].get(name)]
        runs = [data[ms][name] for ms in flush if data[ms].get(name)]
        kept = [(median(r, "bystander_acked") or 0) / (median(r, "bystander_sent") or 1) * 100
                for r in runs]
        p99 = []
        for r in runs:
            text = _ms(r, "bystander_p99_ms")
            p99.append(never if text == "never" else median(r, "bystander_p99_ms") or never)
        kept_ax.plot(xs, kept, marker="o", label=name)
        p99_ax.plot(xs, p99, marker="o", label=name)
    kept_ax.set_xlabel("added latency per flush, ms")
    kept_ax.set_ylabel("bystander PUBACKs kept, %")
    kept_ax.set_ylim(0, 105)
    p99_ax.set_xlabel("added latency per flush, ms")
    p99_ax.set_ylabel("bystander PUBACK p99, ms (top: never)")
    p99_ax.set_yscale("log")
    p99_ax.set_ylim(1, never * 1.5)
    for bound, style in ((50, ":"), (300, "--")):
        p99_ax.axhline(bound, color="grey", linestyle=style, linewidth=0.8)
    kept_ax.legend(fontsize=7)
    fig.suptitle("bystander at 100 msg/s while child B storms (storm-link)")
    fig.tight_layout()
    fig.savefig(out / "slowflash.png", dpi=100)
    plt.close(fig)
