"""Modules as systemd units: `gatewayd-module@{name}.service`, one per module.

Limits, logs (`journalctl -u gatewayd-module@filter`), hardening and the process tree are
systemd's; gatewayd only starts, stops and watches the units, through `systemctl` (the polkit
rule systemd/gatewayd-modules.rules lets the gatewayd user manage gatewayd-module@ units and
no others). The template unit (systemd/gatewayd-module@.service) runs every module as the
unprivileged user gatewayd-module, and takes the module's argv and environment from the spec
file gatewayd writes, `{spec_dir}/{instance}.env`, as an EnvironmentFile: systemd reads it as
root, so it stays readable by gatewayd alone, and it holds no secrets (a module's key never
leaves gatewayd; the module signs through the workload API). exec_shim.py `--unit` turns it
into the command's environment and exec()s the command.

Restarts: the template says Restart=no, and gatewayd applies the restart policy itself, from
what it observes with `systemctl show` (polled every `poll_secs` from an asyncio subprocess,
never blocking the loop). Why not Restart= in the unit: the policy and the backoff are per
module and a template cannot vary them per instance (gatewayd, not being root, cannot write
drop-ins); and the IoT Edge backoff, min(10 s * 2^n, 300 s) reset after a healthy run, is not
expressible before systemd 254's RestartSteps= (Debian 12 has 252). One implementation of the
rules (supervision.py) then serves both runners and reports the same runtimeStatus. The price:
while gatewayd itself is down, a crashed module waits for it to come back to be restarted.

Units outlive gatewayd: `systemctl restart gatewayd` does not touch them (no PartOf=), and
stop_all() leaves them running. On start, a unit already active is adopted, not restarted, when
it was started from the spec gatewayd would write now: after each start gatewayd records the
spec's hash in `{instance}.started`; a crash between writing a spec and starting its unit
leaves the old hash there, so the stale unit is restarted. settings.user is not honoured
here (one journal line says so): an operator who wants a module under another user adds a
drop-in with User= to its unit, which systemd applies and gatewayd cannot.

Module names are IoT Hub module ids, which may hold characters a unit name may not: the
instance is the name escaped as `systemd-escape` does (`a+b` is `gatewayd-module@a\\x2bb`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.log import Event, event
from gateway.modules.deployment import RUNNING, Deployment, Module
from gateway.modules.exec_shim import SPEC_VARIABLE
from gateway.modules.supervision import (
    STOPPED,
    Backoff,
    Book,
    ModuleState,
    after_exit,
    signal_name,
)

UNIT_PREFIX = "gatewayd-module@"
SPEC_DIR = Path("/var/lib/gatewayd/modules")  # the template's EnvironmentFile= names it
SHOW_PROPERTIES = ("Id", "ActiveState", "SubState", "MainPID", "ExecMainCode",
                   "ExecMainStatus", "ExecMainStartTimestampMonotonic",
                   "ExecMainExitTimestampMonotonic")
CLD_EXITED = 1  # ExecMainCode: the si_code of the main process's end (exited, killed, dumped)
_UNIT_CHARS = re.compile(r"[A-Za-z0-9:_.]")
_CGROUP_UNIT_RE = re.compile(r"/gatewayd-module@([^/]+)\.service(?:/|$)")


# -- names, spec files, systemctl output: pure ---------------------------------------------------


def escape(name: str) -> str:
    """systemd-escape (not --path): keep [A-Za-z0-9:_.] (no leading "."), \\xNN the rest."""
    out = []
    for i, ch in enumerate(name):
        if _UNIT_CHARS.fullmatch(ch) and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def unescape(instance: str) -> str:
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                 instance.encode())
    return raw.decode(errors="replace")


def unit_name(module: str) -> str:
    return f"{UNIT_PREFIX}{escape(module)}.service"


def spec_text(module: Module, env: dict[str, str]) -> str:
    """The spec file: one EnvironmentFile line. Base64, so no quoting rule can bite."""
    spec = {"name": module.name, "command": list(module.command), "env": env}
    blob = base64.b64encode(json.dumps(spec, sort_keys=True).encode()).decode()
    return f"{SPEC_VARIABLE}={blob}\n"


def spec_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_show(text: str) -> dict[str, dict[str, str]]:
    """`systemctl show -p ... UNIT...` output (blocks of KEY=VALUE, blank-line separated), by
    the unit's Id."""
    units: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            units[props["Id"]] = props
    return units


def observed_exit(props: dict[str, str], run_started_us: int) -> int | None:
    """The exit code (exit_code()'s form) of the run that started at `run_started_us`, if that
    run has ended; None while it runs (or if the unit shows another run)."""
    if props.get("ActiveState") not in ("inactive", "failed"):
        return None
    started = _int(props.get("ExecMainStartTimestampMonotonic"))
    ended = _int(props.get("ExecMainExitTimestampMonotonic"))
    if started != run_started_us or ended < started or ended == 0:
        return None
    status = _int(props.get("ExecMainStatus"))
    return status if _int(props.get("ExecMainCode")) == CLD_EXITED else 128 + status


def module_of_cgroup(text: str) -> str | None:
    """The module whose unit a /proc/PID/cgroup names, if any."""
    for line in text.splitlines():
        found = _CGROUP_UNIT_RE.search(line.split(":", 2)[-1])
        if found:
            return unescape(found.group(1))
    return None


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


# -- the runner ----------------------------------------------------------------------------------


@dataclass
class _Unit:
    module: Module
    state: ModuleState
    run_started_us: int = 0  # ExecMainStartTimestampMonotonic of the run being watched
    restart_at: float | None = None  # monotonic time of a pending policy restart


class UnitRunner:
    """ModuleRunner's interface, with each module a systemd unit."""

    def __init__(
        self,
        *,
        env_for: Callable[[str], dict[str, str]],
        backoff_base_secs: float = 10.0,
        backoff_max_secs: float = 300.0,
        healthy_run_secs: float = 600.0,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        spec_dir: Path = SPEC_DIR,
        poll_secs: float = 2.0,
        systemctl: str = "systemctl",
    ) -> None:
        self._env_for = env_for
        self._backoff = Backoff(backoff_base_secs, backoff_max_secs, healthy_run_secs)
        self._on_change = on_change
        self._clock = clock
        self._spec_dir = spec_dir
        self._poll_secs = poll_secs
        self._systemctl = systemctl
        self._book = Book()
        self._units: dict[str, _Unit] = {}
        self._desired = Deployment.empty()
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None
        self._user_noted: set[str] = set()

    def apply(self, deployment: Deployment) -> asyncio.Task:
        self._desired = deployment
        self._book.applied(deployment.version)
        self._on_change()
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return asyncio.get_running_loop().create_task(self._reconcile(deployment))

    def refused(self, version: int | None, reason: str) -> None:
        self._book.refused(version, reason)  # the journal line is the agent's
        self._on_change()

    def reported(self) -> dict:
        return self._book.to_reported()

    def owner_of(self, pid: int) -> str | None:
        """The module whose unit's cgroup holds pid (procfs, not the disk)."""
        try:
            name = module_of_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
        except OSError:
            return None
        return name if name in self._units else None

    async def stop_all(self) -> None:
        """gatewayd stops; the units do not (they are adopted by the next gatewayd)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    # -- reconciling -----------------------------------------------------------------------------

    async def _reconcile(self, deployment: Deployment) -> None:
        async with self._lock:
            if deployment is not self._desired:
                return
            shown = await self._show([unit_name(n) for n in
                                      {*self._units, *deployment.modules}])
            for name in [n for n in self._units if n not in deployment.modules]:
                await self._ctl("stop", unit_name(name))
                self._units.pop(name)
                self._book.modules.pop(name, None)
                await asyncio.to_thread(self._forget_spec, name)
            for module in deployment.in_startup_order():
                await self._converge(module, deployment.version,
                                     shown.get(unit_name(module.name), {}))
            self._on_change()

    async def _converge(self, module: Module, version: int, props: dict[str, str]) -> None:
        """One module to its desired state. With the same spec and still wanted running, the
        unit is the watcher's (running, in backoff, or ended by its policy): left alone."""
        unit = self._units.get(module.name)
        same = unit is not None and unit.module.spec() == module.spec()
        was_wanted = same and unit is not None and unit.state.desired_status == RUNNING
        if unit is None or not same:
            unit = self._units[module.name] = _Unit(
                module, ModuleState(module.name, module.version, version, module.status))
            self._book.modules[module.name] = unit.state
        unit.module = module
        unit.state.desired_version, unit.state.desired_status = version, module.status
        if module.status != RUNNING:
            unit.restart_at = None
            await self._ctl("stop", unit_name(module.name))
            unit.state.runtime_status = STOPPED
            return
        self._note_user(module)
        if was_wanted:
            return
        text = spec_text(module, self._environment(module))
        adopted = await asyncio.to_thread(self._started_hash, module.name) == spec_hash(text)
        if props.get("ActiveState") == "active" and adopted:
            unit.run_started_us = _int(props.get("ExecMainStartTimestampMonotonic"))
            ago = time.monotonic() - unit.run_started_us / 1e6
            unit.state.started(self._clock() - max(ago, 0.0))
            event(Event.MODULE_STARTED, f"module {module.name}: adopted the running "
                  f"{unit_name(module.name)} (same spec)", module=module.name)
            return
        await asyncio.to_thread(self._write_spec, module.name, text)
        await self._start(unit, text)

    def _note_user(self, module: Module) -> None:
        if module.user and module.name not in self._user_noted:
            self._user_noted.add(module.name)
            event(Event.MODULE_USER_IGNORED,
                  f"module {module.name}: settings.user {module.user!r} is not applied by "
                  f"gatewayd under systemd; the unit runs as gatewayd-module unless a drop-in "
                  f"for {unit_name(module.name)} sets User=", level=logging.WARNING,
                  module=module.name)

    async def _start(self, unit: _Unit, text: str) -> None:
        name = unit.module.name
        await self._ctl("reset-failed", unit_name(name))
        rc, err = await self._ctl("restart", unit_name(name))
        if rc != 0:
            unit.state.exited(1, self._clock(), 0.0, self._backoff)
            unit.state.description = f"systemctl restart failed: {err.strip()}"
            self._schedule_restart(unit, 1)
            return
        await asyncio.to_thread(self._write_started, name, spec_hash(text))
        props = (await self._show([unit_name(name)])).get(unit_name(name), {})
        unit.run_started_us = _int(props.get("ExecMainStartTimestampMonotonic"))
        unit.restart_at = None
        unit.state.started(self._clock())
        event(Event.MODULE_STARTED, f"module {name}: started ({unit_name(name)}, main pid "
              f"{props.get('MainPID', '?')})", module=name)
        self._on_change()

    def _schedule_restart(self, unit: _Unit, code: int) -> None:
        verdict = after_exit(unit.module.restart_policy, code)
        unit.state.runtime_status = verdict.status
        delay = self._backoff.delay(unit.state.unhealthy_restarts)
        unit.restart_at = time.monotonic() + delay if verdict.restart else None
        event(Event.MODULE_EXITED,
              f"module {unit.module.name}: exited ({signal_name(code)}); "
              + (f"restarting in {delay:g} s" if verdict.restart else "not restarted")
              + f" (restartPolicy {unit.module.restart_policy})",
              level=logging.WARNING if code else logging.INFO, module=unit.module.name,
              exit_code=code)
        self._on_change()

    # -- watching --------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_secs)
            async with self._lock:
                await self._observe()

    async def _observe(self) -> None:
        running = [u for u in self._units.values() if u.state.runtime_status == "running"]
        shown = await self._show([unit_name(u.module.name) for u in running]) if running else {}
        for unit in running:
            code = observed_exit(shown.get(unit_name(unit.module.name), {}), unit.run_started_us)
            if code is not None:
                ended = _int(shown[unit_name(unit.module.name)]["ExecMainExitTimestampMonotonic"])
                ran = (ended - unit.run_started_us) / 1e6
                unit.state.exited(code, self._clock(), ran, self._backoff)
                self._schedule_restart(unit, code)
        now = time.monotonic()
        for unit in list(self._units.values()):
            if unit.restart_at is not None and unit.restart_at <= now:
                unit.state.restart_count += 1
                unit.state.unhealthy_restarts += 1
                await self._start(unit, spec_text(unit.module, self._environment(unit.module)))

    # -- systemctl and the spec files --------------------------------------------------------------

    async def _ctl(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            self._systemctl, "--no-ask-password", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode != 0 and args[0] not in ("reset-failed",):
            event(Event.MODULE_EXITED, f"modules: systemctl {' '.join(args)} failed: "
                  f"{err.decode(errors='replace').strip()}", level=logging.ERROR)
        return proc.returncode or 0, err.decode(errors="replace")

    async def _show(self, units: list[str]) -> dict[str, dict[str, str]]:
        if not units:
            return {}
        proc = await asyncio.create_subprocess_exec(
            self._systemctl, "show", "-p", ",".join(SHOW_PROPERTIES), *units,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        return parse_show(out.decode(errors="replace"))

    def _environment(self, module: Module) -> dict[str, str]:
        env = dict(module.env)
        env.update(self._env_for(module.name))
        return env

    def _path(self, name: str, suffix: str) -> Path:
        return self._spec_dir / f"{escape(name)}{suffix}"

    def _write_spec(self, name: str, text: str) -> None:
        """Atomically, readable by gatewayd only (systemd reads it as root). Runs in a thread."""
        self._spec_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        path = self._path(name, ".env")
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _write_started(self, name: str, digest: str) -> None:
        self._path(name, ".started").write_text(digest + "\n")

    def _started_hash(self, name: str) -> str:
        try:
            return self._path(name, ".started").read_text().strip()
        except OSError:
            return ""

    def _forget_spec(self, name: str) -> None:
        for suffix in (".env", ".started"):
            with contextlib.suppress(OSError):
                self._path(name, suffix).unlink()
