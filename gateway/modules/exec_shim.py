"""The few steps between gatewayd and a module's own program, then exec().

Process mode (`exec_shim.py --parent PID [--user NAME] -- ARGV...`): gatewayd starts this file
with `python -I -S`, so it imports nothing but the standard library and takes a few
milliseconds. It drops to the module's user if asked (gatewayd is root), then asks the kernel
for SIGTERM when gatewayd dies (PR_SET_PDEATHSIG; after the user change, which would clear it),
checks that gatewayd did not die before that, and execs the module. Doing this in a program of
its own rather than in Popen's preexec_fn keeps Python code out of the window between fork and
exec, which is unsafe when the parent has threads (gatewayd's executor and writer have).

Systemd mode (`python -m gateway.modules.exec_shim --unit NAME`): the template unit
gatewayd-module@.service reads the module's spec file as an EnvironmentFile (systemd does that
as root, so the file stays readable by gatewayd alone); the spec is one variable,
GATEWAYD_MODULE_SPEC, base64 of {"name", "command", "env"}. The shim checks the name, sets the
environment and execs the command. No pdeathsig: the unit is meant to outlive gatewayd.

An exec that fails exits 127 with one line on stderr, as a shell does.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import signal
import sys

PR_SET_PDEATHSIG = 1
SPEC_VARIABLE = "GATEWAYD_MODULE_SPEC"


def _die(message: str, code: int = 127) -> None:
    print(f"gatewayd module: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _become(user: str) -> None:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        _die(f"user {user!r} does not exist", 126)
    if pw.pw_uid == 0:
        _die(f"user {user!r} is root; a module may not run as root", 126)
    os.initgroups(user, pw.pw_gid)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    os.environ.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)


def _exec(argv: list[str], env: dict[str, str]) -> None:
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        _die(f"cannot run {argv[0]!r}: {exc.strerror or exc}")


def process_mode(args: list[str]) -> None:
    # imported here, in the shim's own process (the daemon imports this module for its names),
    # and before the user changes, who may not read the interpreter's library
    import ctypes

    parent, user = 0, None
    while args and args[0] != "--":
        flag, value, args = args[0], args[1], args[2:]
        if flag == "--parent":
            parent = int(value)
        elif flag == "--user":
            user = value
        else:
            _die(f"unknown flag {flag}", 2)
    argv = args[1:]
    if not argv:
        _die("no command", 2)
    if user:
        _become(user)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        _die(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}", 126)
    if parent and os.getppid() != parent:
        sys.exit(128 + signal.SIGTERM)  # gatewayd died before the prctl: do not start orphaned
    _exec(argv, dict(os.environ))


def unit_mode(name: str) -> None:
    raw = os.environ.pop(SPEC_VARIABLE, None)
    if raw is None:
        _die(f"{SPEC_VARIABLE} is not set: the spec file of module {name} is missing; gatewayd "
             f"writes it before it starts the unit", 126)
    try:
        spec = json.loads(base64.b64decode(raw, validate=True))
    except ValueError as exc:
        _die(f"the spec of module {name} is unreadable: {exc}", 126)
    if spec.get("name") != name:
        _die(f"the spec file of module {name} names {spec.get('name')!r}", 126)
    env = dict(os.environ)
    env.update(spec["env"])
    _exec(list(spec["command"]), env)


def main(args: list[str]) -> None:
    if len(args) == 2 and args[0] == "--unit":
        unit_mode(args[1])
    else:
        process_mode(args)


if __name__ == "__main__":
    main(sys.argv[1:])
