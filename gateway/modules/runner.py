"""Modules as gatewayd's own child processes: the IoT Edge agent's job, without Docker.

Process mode is for development, tests and hosts without systemd (under systemd, units.py runs
each module as its own unit). Every module runs in its own session and process group, started
through exec_shim.py, which sets PR_SET_PDEATHSIG: when gatewayd is killed (even by SIGKILL) its
modules get SIGTERM, so the next gatewayd starts them fresh and never runs two copies. (The
signal follows the thread that forked: modules are started from the event loop's thread, which
lives as long as gatewayd.)

Stop is SIGTERM to the process group, then SIGKILL after `stop_grace_secs` (10 s, Docker's
default). When a module's main process exits, whatever it left in its group is killed too, as a
container's would be. The restart rules and the reported document are supervision.py's.

The environment is a minimal base (PATH, LANG from gatewayd's), then the deployment's `env`,
then `env_for(name)` (the IOTEDGE_* variables), each over the one before. stdin is /dev/null;
stdout and stderr are gatewayd's, so under a service manager a module's output is in
gatewayd's journal. settings.user is honoured when gatewayd runs as root (the shim changes user
before exec; root itself is refused by the parser and again by the shim); otherwise the module
runs as gatewayd's user and one journal line per module says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.log import Event, event
from gateway.modules import exec_shim
from gateway.modules.deployment import RUNNING, Deployment, Module
from gateway.modules.supervision import (
    EXEC_FAILED,
    STOPPED,
    Backoff,
    Book,
    ModuleState,
    after_exit,
    exit_code,
    signal_name,
)

SHIM = str(Path(exec_shim.__file__).resolve())
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class _Supervised:
    """One module under supervision: what it should be, and its process."""

    module: Module
    state: ModuleState
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task | None = None


class ModuleRunner:
    """Keeps the deployment's modules running as child processes, by their restart policy."""

    def __init__(
        self,
        *,
        env_for: Callable[[str], dict[str, str]],
        backoff_base_secs: float = 10.0,
        backoff_max_secs: float = 300.0,
        healthy_run_secs: float = 600.0,
        stop_grace_secs: float = 10.0,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._env_for = env_for
        self._backoff = Backoff(backoff_base_secs, backoff_max_secs, healthy_run_secs)
        self._grace = stop_grace_secs
        self._on_change = on_change
        self._clock = clock
        self._book = Book()
        self._desired = Deployment.empty()
        self._running: dict[str, _Supervised] = {}
        self._lock = asyncio.Lock()
        self._specs: dict[str, tuple] = {}  # the spec each module's state was counted for
        self._user_noted: set[str] = set()

    # -- the interface ---------------------------------------------------------------------------

    def apply(self, deployment: Deployment) -> asyncio.Task:
        """Make the running modules match `deployment`: removed or stopped ones are stopped,
        changed ones (version, settings, env) restarted, the rest started in startupOrder.
        Returns the task doing it (await it to know it is done); applies run one at a time."""
        self._desired = deployment
        self._book.applied(deployment.version)
        self._changed()
        return asyncio.get_running_loop().create_task(self._reconcile(deployment))

    def refused(self, version: int | None, reason: str) -> None:
        """A document was refused (by the parser or the caller); the modules in force run on.
        Recorded for the reported document; the journal line is the agent's."""
        self._book.refused(version, reason)
        self._changed()

    def reported(self) -> dict:
        return self._book.to_reported()

    def owner_of(self, pid: int) -> str | None:
        """The module whose process this pid is, or whose descendant (same session, or a parent
        chain that reaches a module's main process)."""
        mains = {s.proc.pid: name for name, s in self._running.items()
                 if s.proc is not None and s.proc.returncode is None}
        if not mains:
            return None
        with contextlib.suppress(OSError):
            owner = mains.get(os.getsid(pid))
            if owner is not None:
                return owner
        seen = 0
        while pid > 1 and seen < 64:
            if pid in mains:
                return mains[pid]
            pid = _parent_of(pid)
            seen += 1
        return None

    async def stop_all(self) -> None:
        """Stop every module (gatewayd is shutting down)."""
        async with self._lock:
            await asyncio.gather(*(self._stop(name) for name in list(self._running)))

    # -- reconciling -----------------------------------------------------------------------------

    async def _reconcile(self, deployment: Deployment) -> None:
        async with self._lock:
            if deployment is not self._desired:
                return  # a newer apply is queued behind this one and will do the work
            for name in [n for n in self._book.modules if n not in deployment.modules]:
                await self._stop(name)
                self._book.modules.pop(name, None)
                self._specs.pop(name, None)
                self._changed()
            for module in deployment.in_startup_order():
                await self._converge(module, deployment.version)

    async def _converge(self, module: Module, version: int) -> None:
        """One module to its desired state. A module that ended by its restart policy (never,
        or on-failure after exit 0) is not started again by the same spec: a new version is."""
        sup = self._running.get(module.name)
        state = self._book.modules.get(module.name)
        new_spec = state is None or self._specs.get(module.name) != module.spec()
        if sup is not None and (new_spec or module.status != RUNNING):
            await self._stop(module.name)
            sup = None
        start = module.status == RUNNING and sup is None and (
            new_spec or state is None or state.desired_status != RUNNING)
        if new_spec:
            state = self._fresh_state(module, version, state)
        assert state is not None
        self._specs[module.name] = module.spec()
        state.desired_version = version
        state.desired_status = module.status
        if sup is not None:
            sup.module = module  # same process; a new restart policy applies from its next exit
        elif start:
            sup = self._running[module.name] = _Supervised(module, state)
            started = asyncio.get_running_loop().create_future()
            sup.task = asyncio.get_running_loop().create_task(self._supervise(sup, started))
            await started  # IoT Edge's startupOrder: the next module starts once this one has
        self._changed()

    def _fresh_state(self, module: Module, version: int, old: ModuleState | None) -> ModuleState:
        """A new spec starts counting afresh; the last run's times and exit code stay shown."""
        state = ModuleState(module.name, module.version, version, module.status)
        if old is not None:
            state.exit_code, state.last_exit = old.exit_code, old.last_exit
            state.last_start = old.last_start
        self._book.modules[module.name] = state
        return state

    async def _stop(self, name: str) -> None:
        sup = self._running.pop(name, None)
        if sup is None:
            return
        sup.stop.set()
        if sup.proc is not None and sup.proc.returncode is None:
            await self._terminate(sup.proc)
        if sup.task is not None:
            await sup.task
        sup.state.runtime_status = STOPPED
        self._changed()

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        _killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._grace)
        except TimeoutError:
            _killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    # -- one module's life -----------------------------------------------------------------------

    async def _supervise(self, sup: _Supervised, started: asyncio.Future) -> None:
        """Start, wait, apply the restart policy, until stopped or the policy says no more."""
        try:
            while not sup.stop.is_set():
                began = time.monotonic()
                code = await self._run_once(sup, started)
                sup.state.exited(code, self._clock(), time.monotonic() - began, self._backoff)
                if sup.stop.is_set():
                    event(Event.MODULE_STOPPED, f"module {sup.module.name}: stopped "
                          f"({signal_name(code)})", module=sup.module.name, exit_code=code)
                    return
                verdict = after_exit(sup.module.restart_policy, code)
                sup.state.runtime_status = verdict.status
                delay = self._backoff.delay(sup.state.unhealthy_restarts)
                event(Event.MODULE_EXITED,
                      f"module {sup.module.name}: exited ({signal_name(code)}); "
                      + (f"restarting in {delay:g} s ({sup.module.restart_policy})"
                         if verdict.restart else
                         f"not restarted (restartPolicy {sup.module.restart_policy})"),
                      level=logging.WARNING if code else logging.INFO,
                      module=sup.module.name, exit_code=code)
                self._changed()
                if not verdict.restart:
                    if self._running.get(sup.module.name) is sup:
                        del self._running[sup.module.name]
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sup.stop.wait(), delay)
                if not sup.stop.is_set():
                    sup.state.restart_count += 1
                    sup.state.unhealthy_restarts += 1
        finally:
            if not started.done():
                started.set_result(None)

    async def _run_once(self, sup: _Supervised, started: asyncio.Future) -> int:
        """One run of the module's process: its exit code (exit_code()'s form)."""
        module = sup.module
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(module), env=self._env(module), stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        except OSError as exc:
            sup.state.description = f"cannot start: {exc}"
            return EXEC_FAILED
        finally:
            if not started.done():
                started.set_result(None)
        sup.proc = proc
        sup.state.started(self._clock())
        event(Event.MODULE_STARTED, f"module {module.name}: started (pid {proc.pid}, version "
              f"{module.version or '-'})", module=module.name, pid=proc.pid)
        self._changed()
        code = exit_code(await proc.wait())
        _killpg(proc.pid, signal.SIGKILL)  # what it left behind goes with it, as in a container
        return code

    def _argv(self, module: Module) -> list[str]:
        argv = [sys.executable, "-I", "-S", SHIM, "--parent", str(os.getpid())]
        if module.user and os.geteuid() == 0:
            argv += ["--user", module.user]
        elif module.user and module.name not in self._user_noted:
            self._user_noted.add(module.name)
            event(Event.MODULE_USER_IGNORED,
                  f"module {module.name}: settings.user {module.user!r} is not honoured "
                  f"(gatewayd does not run as root); it runs as gatewayd's user",
                  level=logging.WARNING, module=module.name)
        return [*argv, "--", *module.command]

    def _env(self, module: Module) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", DEFAULT_PATH),
               "LANG": os.environ.get("LANG", "C.UTF-8")}
        env.update(module.env)
        env.update(self._env_for(module.name))
        return env

    def _changed(self) -> None:
        self._on_change()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _parent_of(pid: int) -> int:
    """The parent pid from /proc (procfs, not the disk); 0 when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])
