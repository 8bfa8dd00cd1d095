"""Which module a local process belongs to: the answer the workload API's 403 rests on.

The kernel names the process at the other end of a unix socket (SO_PEERCRED, fixed at connect);
what remains is to tie that pid to a module. Two ways, one per way of running modules:

- process mode (development, tests): gatewayd started the module itself and knows its main pid;
  a process belongs to module m when m's main pid is that process or one of its ancestors, so
  that a module's own children (a shell wrapper, a worker pool) may sign as it.
- systemd mode: each module is the unit `gatewayd-module@NAME.service`, and every process it
  forks stays in that unit's cgroup; a process cannot move itself out of it without write access
  to another cgroup, which the module's user does not have. Ancestry would not do here: systemd,
  not gatewayd, is every module's parent.

What the kernel records is the pid at connect(): a caller that hands its connected socket to
another process (SCM_RIGHTS) lends its identity, which only a module's own code can do. A caller
that exits while a child of its keeps the socket open leaves a pid that a module started later
could be given; the kernel hands pids out in sequence up to pid_max, so that takes a wrap-around
while the socket stays open (pidfds, SO_PEERPIDFD from Linux 6.5, would close even that).

The parsers are pure (text in, answer out) so that the odd cases of /proc are tested on strings;
`read_parent` and `read_cgroup` are the only functions that touch /proc. procfs is memory, not the
disk, but a caller on the event loop still runs the walk in a worker thread.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
MAX_DEPTH = 64  # longer parent chains than this do not occur; a bound in case /proc is odd
UNIT = re.compile(r"^gatewayd-module@(.+)\.service$")
_UCRED = struct.Struct("3i")  # struct ucred: pid_t pid, uid_t uid, gid_t gid


@dataclass(frozen=True)
class PeerCred:
    """Who is at the other end of a unix socket, as the kernel recorded it at connect()."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCred:
    """SO_PEERCRED of a connected unix socket (Linux); the peer cannot forge it."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return PeerCred(*_UCRED.unpack(raw))


def parse_ppid(stat: str) -> int | None:
    """The parent pid from the text of /proc/PID/stat, or None when the text is not one.

    The second field is the command name in parentheses, and a name may itself hold spaces and
    ")" (a process may call itself anything), so the fields are counted from the LAST ")".
    """
    end = stat.rfind(")")
    if end < 0:
        return None
    fields = stat[end + 1:].split()
    if len(fields) < 2 or not fields[1].isdigit():
        return None
    return int(fields[1])


def owner_by_ancestry(pid: int, main_pids: Mapping[str, int],
                      parent_of: Callable[[int], int | None]) -> str | None:
    """The module whose main process is `pid` or an ancestor of it (process mode), or None.

    Stops at pid 1 (init adopts orphans: a process that outlived its module and was reparented
    belongs to no module any more), at a pid whose parent cannot be read (it exited), and after
    MAX_DEPTH steps.
    """
    by_pid = {p: name for name, p in main_pids.items() if p > 1}
    seen: set[int] = set()
    current: int | None = pid
    for _ in range(MAX_DEPTH):
        if current is None or current <= 1 or current in seen:
            return None
        if current in by_pid:
            return by_pid[current]
        seen.add(current)
        current = parent_of(current)
    return None


def _unescape_unit(name: str) -> str:
    """systemd writes unsafe characters of a unit name as \\xNN; the module name is the raw one."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def module_of_cgroup(cgroup: str) -> str | None:
    """The module NAME of the `gatewayd-module@NAME.service` a process is in (systemd mode).

    `cgroup` is the text of /proc/PID/cgroup: one `hierarchy:controllers:path` line per
    hierarchy (one `0::/path` line under cgroup v2). A unit that delegates its cgroup may hold
    sub-cgroups below the unit's, so every component of the path is looked at, not only the last.
    A process in two different module units (two hierarchies that disagree) belongs to neither.
    """
    found: set[str] = set()
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for component in parts[2].split("/"):
            match = UNIT.match(component)
            if match:
                found.add(_unescape_unit(match.group(1)))
    return found.pop() if len(found) == 1 else None


def read_parent(pid: int) -> int | None:
    """The parent of a running process, or None when it has exited (or never was)."""
    try:
        return parse_ppid((PROC / str(pid) / "stat").read_text(errors="replace"))
    except OSError:
        return None


def read_cgroup(pid: int) -> str:
    """The text of /proc/PID/cgroup, or "" when the process has exited."""
    try:
        return (PROC / str(pid) / "cgroup").read_text(errors="replace")
    except OSError:
        return ""


def owner_in_process_mode(pid: int, main_pids: Mapping[str, int]) -> str | None:
    """owner_by_ancestry against the live /proc; for the runner that started the modules."""
    return owner_by_ancestry(pid, main_pids, read_parent)


def owner_in_systemd_mode(pid: int) -> str | None:
    """module_of_cgroup against the live /proc; for modules run as systemd units."""
    return module_of_cgroup(read_cgroup(pid))
