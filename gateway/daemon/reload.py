"""What a configuration reload (SIGHUP, `systemctl reload gatewayd`) may change while running.

A reload never makes things worse: the new file is checked whole first, and a file with any error
is refused with one journal line while the running configuration stays. Of a good file, what can
change live is applied (log level, time to live, commit cadence, the whole cloud section by
starting a new uplink); what cannot (listeners, the store's path, the control socket, the
gateway's identity, the auth and metrics sections) is named in the journal line as needing a
restart, and keeps its old value in the running configuration until that restart: the running
configuration describes the running process, so the next reload names the same keys again.
"""

from __future__ import annotations

from dataclasses import fields, replace

LIVE_SECTIONS = ("log", "cloud")
LIVE_STORAGE_KEYS = ("time_to_live_secs", "commit_interval_ms", "commit_max_messages")


def changed_keys(old, new) -> list[str]:
    """`section.key` for every value that differs between two Config objects."""
    out = []
    for section in fields(old):
        if section.name == "source":
            continue
        before, after = getattr(old, section.name), getattr(new, section.name)
        for item in fields(before):
            if getattr(before, item.name) != getattr(after, item.name):
                out.append(f"{section.name}.{item.name}")
    return out


def split_live(keys: list[str]) -> tuple[list[str], list[str]]:
    """(applied live, needing a restart)."""
    live, restart = [], []
    for key in keys:
        section, _, name = key.partition(".")
        if section in LIVE_SECTIONS or (section == "storage" and name in LIVE_STORAGE_KEYS):
            live.append(key)
        else:
            restart.append(key)
    return live, restart


def running_config(old, new):
    """The configuration in force after a reload: the new file's live sections and keys, every
    restart-only value as the process started with it."""
    kept = {}
    for section in fields(old):
        name = section.name
        if name == "source" or name in LIVE_SECTIONS:
            continue
        if name == "storage":
            live = {key: getattr(new.storage, key) for key in LIVE_STORAGE_KEYS}
            kept[name] = replace(old.storage, **live)
        else:
            kept[name] = getattr(old, name)
    return replace(new, **kept)
