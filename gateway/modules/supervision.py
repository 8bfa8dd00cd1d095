"""What a module's exit means, and the agent's reported document: shared by both runners.

The process runner (runner.py) and the systemd runner (units.py) differ in how a process is
started and watched; the rules for what happens after it ends are the IoT Edge agent's and are
the same for both, so they live here, with no I/O:

- `never`: not restarted; runtimeStatus `stopped` after exit 0, `failed` otherwise.
- `on-failure`: restarted after a non-zero exit or a signal; `stopped` after exit 0.
- `always`: restarted after any exit.
- A restart waits min(base * 2^n, max) seconds (IoT Edge: 10 s and 300 s), n being the restarts
  since the last healthy run; runtimeStatus is `backoff` meanwhile. A run that lasted
  `healthy_run_secs` (600 s, IoT Edge's "intensive care" time of ten minutes) resets n, so
  that a module which crashes once a day restarts after 10 s each time, not after 300 s.
- restartCount counts the policy's restarts since the module's current spec was deployed; it is
  not reset by a healthy run (the backoff exponent is), so an operator sees every crash.
- exitCode is the exit status, or 128 + the signal number for a process killed by a signal (as
  Docker reports it, so 137 is SIGKILL).
"""

from __future__ import annotations

import datetime
import signal
from dataclasses import dataclass, field

from gateway.modules.deployment import ALWAYS, NEVER, ON_FAILURE

RUNNING = "running"
BACKOFF = "backoff"
STOPPED = "stopped"
FAILED = "failed"
EXEC_FAILED = 127  # the shell's code for a command that could not be run


@dataclass(frozen=True)
class Backoff:
    base_secs: float = 10.0
    max_secs: float = 300.0
    healthy_run_secs: float = 600.0

    def delay(self, n: int) -> float:
        """Seconds before restart number n + 1 since the last healthy run."""
        return min(self.base_secs * 2 ** min(n, 64), self.max_secs)


@dataclass(frozen=True)
class Verdict:
    restart: bool
    status: str  # the runtimeStatus until the restart (BACKOFF) or for good


def exit_code(returncode: int) -> int:
    """A Popen returncode (negative: killed by that signal) as Docker reports it."""
    return 128 - returncode if returncode < 0 else returncode


def after_exit(policy: str, code: int) -> Verdict:
    """What the restart policy says about an exit with this (exit_code()) code."""
    failed = code != 0
    if policy == ALWAYS or (policy == ON_FAILURE and failed):
        return Verdict(True, BACKOFF)
    if policy in (NEVER, ON_FAILURE):
        return Verdict(False, FAILED if failed else STOPPED)
    raise ValueError(f"unknown restart policy {policy!r}")


def signal_name(code: int) -> str:
    """`exit 3` or `SIGKILL` for a journal line."""
    if code > 128:
        try:
            return signal.Signals(code - 128).name
        except ValueError:
            pass
    return f"exit {code}"


def utc(wall: float | None) -> str | None:
    if wall is None:
        return None
    stamp = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class ModuleState:
    """One module's reported state; mutated by its runner only."""

    name: str
    version: str
    desired_version: int  # the deployment version this module's desired state comes from
    desired_status: str
    runtime_status: str = STOPPED
    exit_code: int | None = None
    last_start: float | None = None  # wall time
    last_exit: float | None = None
    restart_count: int = 0
    unhealthy_restarts: int = 0  # n of the backoff: restarts since the last healthy run
    description: str = ""

    def started(self, wall: float) -> None:
        self.runtime_status = RUNNING
        self.last_start = wall
        self.description = ""

    def exited(self, code: int, wall: float, ran_secs: float, backoff: Backoff) -> None:
        self.exit_code = code
        self.last_exit = wall
        if ran_secs >= backoff.healthy_run_secs:
            self.unhealthy_restarts = 0

    def to_reported(self) -> dict:
        out = {
            "version": self.version,
            "status": self.desired_status,
            "runtimeStatus": self.runtime_status,
            "exitCode": self.exit_code,
            "lastStartTimeUtc": utc(self.last_start),
            "lastExitTimeUtc": utc(self.last_exit),
            "restartCount": self.restart_count,
            "lastDesiredVersion": self.desired_version,
        }
        if self.description:
            out["statusDescription"] = self.description
        return out


@dataclass
class Book:
    """The agent's reported document: the modules' states and the last document's fate."""

    modules: dict[str, ModuleState] = field(default_factory=dict)
    deployment_version: int = -1  # the version in force
    last_desired_version: int | None = None  # the last version received, applied or refused
    refusal: str = ""

    def applied(self, version: int) -> None:
        self.deployment_version = version
        self.last_desired_version = version
        self.refusal = ""

    def refused(self, version: int | None, reason: str) -> None:
        self.last_desired_version = version
        self.refusal = reason

    def to_reported(self) -> dict:
        """IoT Edge's shape: lastDesiredStatus is {code 200} or {code 400, description}."""
        status = ({"code": 400, "description": self.refusal} if self.refusal
                  else {"code": 200, "description": ""})
        return {
            "lastDesiredVersion": self.last_desired_version,
            "lastDesiredStatus": status,
            "deploymentVersion": self.deployment_version,
            "modules": {n: s.to_reported() for n, s in sorted(self.modules.items())},
        }
