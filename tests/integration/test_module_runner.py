"""The process runner with real module processes (small python scripts): restart policies and
backoff, stop, restart on a new spec, refusals, PDEATHSIG, identity of a pid.

Waits are on the runner's on_change notifications (or wait_until for processes outside it);
the backoff is made small so that restarts come quickly, and the tests count restarts and read
runtimeStatus rather than measure durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.modules.deployment import DeploymentError, parse_deployment
from gateway.modules.runner import ModuleRunner
from tests.support.wait import wait_until

PY = sys.executable
# A module that says who it is (pid, uid, environment) in a file, then waits to be stopped.
REPORTER = textwrap.dedent("""
    import json, os, signal, sys
    out = sys.argv[1]
    with open(out + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "uid": os.getuid(), "env": dict(os.environ)}, f)
    os.rename(out + ".tmp", out)
    signal.pause()
""")


def _module(command: list[str], **over) -> dict:
    m = {"version": "1", "type": "process", "status": "running", "restartPolicy": "always",
         "settings": {"command": command}}
    m.update(over)
    return m


def _deployment(version: int = 1, **modules):
    return parse_deployment(json.dumps({"version": version, "modules": modules}).encode())


def _crasher(code: int = 3) -> list[str]:
    return [PY, "-c", f"import sys; sys.exit({code})"]


def _reporter(out: Path) -> list[str]:
    return [PY, "-c", REPORTER, str(out)]


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Harness:
    """A runner whose on_change wakes the test; `until` waits on it for a reported state."""

    def __init__(self, **kwargs) -> None:
        self.changed = asyncio.Event()
        options = dict(backoff_base_secs=0.02, backoff_max_secs=0.1, stop_grace_secs=5.0)
        options.update(kwargs)
        self.runner = ModuleRunner(env_for=lambda name: {"IOTEDGE_MODULEID": name},
                                   on_change=self.changed.set, **options)

    async def until(self, predicate, what: str, timeout: float = 15.0) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self.changed.clear()
            reported = self.runner.reported()
            if predicate(reported):
                return reported
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; last: {reported}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    async def file(self, path: Path, what: str, timeout: float = 15.0) -> dict:
        """A module's report file: written by another process, so polled (with a deadline)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (doc := _read_json(path)) is None:
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what} ({path})")
            await asyncio.sleep(0.02)
        return doc

    async def gone(self, pid: int, what: str, timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while _alive(pid):
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what} (pid {pid}) to end")
            await asyncio.sleep(0.02)


def _mod(reported: dict, name: str) -> dict:
    return reported["modules"].get(name, {})


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_crashing_module_is_restarted_with_backoff():
    async def scenario():
        h = Harness()
        await h.runner.apply(_deployment(crash=_module(_crasher(3))))
        r = await h.until(lambda r: _mod(r, "crash").get("restartCount", 0) >= 3,
                          "three restarts")
        m = _mod(r, "crash")
        assert m["exitCode"] == 3
        assert m["runtimeStatus"] in ("backoff", "running")
        assert m["lastExitTimeUtc"] and m["lastStartTimeUtc"]
        await h.runner.stop_all()
        assert _mod(h.runner.reported(), "crash")["runtimeStatus"] == "stopped"
    run(scenario)


def test_never_is_not_restarted_and_on_failure_not_after_exit_0():
    async def scenario():
        h = Harness()
        await h.runner.apply(_deployment(
            once=_module(_crasher(4), restartPolicy="never"),
            clean=_module(_crasher(0), restartPolicy="never"),
            onfail=_module(_crasher(0), restartPolicy="on-failure"),
            clock=_module(_crasher(1))))  # restarts all along: time passes for the others
        r = await h.until(lambda r: _mod(r, "clock").get("restartCount", 0) >= 5
                          and _mod(r, "once").get("runtimeStatus") == "failed"
                          and _mod(r, "onfail").get("exitCode") == 0,
                          "the clock module's restarts")
        assert (_mod(r, "once")["exitCode"], _mod(r, "once")["restartCount"]) == (4, 0)
        assert (_mod(r, "clean")["runtimeStatus"], _mod(r, "clean")["restartCount"]) == (
            "stopped", 0)
        assert (_mod(r, "onfail")["runtimeStatus"], _mod(r, "onfail")["restartCount"]) == (
            "stopped", 0)
        # a deployment with the same spec does not start them again; a new version does
        clean_started = _mod(r, "clean")["lastStartTimeUtc"]
        await h.runner.apply(_deployment(2, once=_module(_crasher(4), restartPolicy="never"),
                                         clean=_module(_crasher(0), restartPolicy="never",
                                                       version="2")))
        r = await h.until(lambda r: _mod(r, "clean").get("lastDesiredVersion") == 2
                          and _mod(r, "clean").get("runtimeStatus") == "stopped"
                          and _mod(r, "clean").get("lastStartTimeUtc") != clean_started,
                          "clean's second run")
        assert _mod(r, "once")["runtimeStatus"] == "failed"
        assert "clock" not in r["modules"] and "onfail" not in r["modules"]
        await h.runner.stop_all()
    run(scenario)


def test_status_stopped_stops_it_and_a_new_version_restarts_it(tmp_path):
    async def scenario():
        h = Harness()
        out = tmp_path / "m.json"
        await h.runner.apply(_deployment(1, m=_module(_reporter(out))))
        first = await h.file(out, "the module's first run")
        out.unlink()
        await h.runner.apply(_deployment(2, m=_module(_reporter(out), version="2",
                                                      env={"X": {"value": "2"}})))
        second = await h.file(out, "the module's second run")
        assert second["pid"] != first["pid"] and not _alive(first["pid"])
        assert second["env"]["X"] == "2"
        r = await h.until(lambda r: _mod(r, "m").get("runtimeStatus") == "running", "running")
        assert (_mod(r, "m")["version"], _mod(r, "m")["lastDesiredVersion"],
                _mod(r, "m")["restartCount"]) == ("2", 2, 0)
        await h.runner.apply(_deployment(3, m=_module(_reporter(out), version="2",
                                                      env={"X": {"value": "2"}},
                                                      status="stopped")))
        assert not _alive(second["pid"])
        m = _mod(h.runner.reported(), "m")
        assert (m["runtimeStatus"], m["status"], m["exitCode"]) == ("stopped", "stopped", 143)
    run(scenario)


def test_a_refused_deployment_keeps_the_modules_in_force(tmp_path):
    async def scenario():
        h = Harness()
        out = tmp_path / "m.json"
        await h.runner.apply(_deployment(1, m=_module(_reporter(out))))
        pid = (await h.file(out, "the module"))["pid"]
        bad = json.dumps({"version": 2, "modules": {"m": _module([])}}).encode()
        with pytest.raises(DeploymentError) as info:
            parse_deployment(bad)
        h.runner.refused(2, info.value.message)
        r = h.runner.reported()
        assert r["lastDesiredStatus"]["code"] == 400
        assert r["lastDesiredStatus"]["description"].startswith("modules.m.settings.command")
        assert (r["lastDesiredVersion"], r["deploymentVersion"]) == (2, 1)
        assert _mod(r, "m")["runtimeStatus"] == "running" and _alive(pid)
        await h.runner.stop_all()
        assert not _alive(pid)
    run(scenario)


def test_a_removed_module_is_stopped_and_forgotten(tmp_path):
    async def scenario():
        h = Harness()
        a, b = tmp_path / "a.json", tmp_path / "b.json"
        await h.runner.apply(_deployment(1, a=_module(_reporter(a)), b=_module(_reporter(b))))
        pid_a = (await h.file(a, "a"))["pid"]
        pid_b = (await h.file(b, "b"))["pid"]
        await h.runner.apply(_deployment(2, b=_module(_reporter(b))))
        r = h.runner.reported()
        assert set(r["modules"]) == {"b"} and not _alive(pid_a) and _alive(pid_b)
        await h.runner.stop_all()
    run(scenario)


def test_the_environment_is_base_then_deployment_then_env_for(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAYD_NOT_FOR_MODULES", "secret")

    async def scenario():
        h = Harness()
        out = tmp_path / "m.json"
        await h.runner.apply(_deployment(1, m=_module(_reporter(out), env={
            "IOTEDGE_MODULEID": {"value": "spoofed"}, "OWN": {"value": "1"}})))
        env = (await h.file(out, "the module"))["env"]
        assert env["IOTEDGE_MODULEID"] == "m" and env["OWN"] == "1"
        assert "PATH" in env and "GATEWAYD_NOT_FOR_MODULES" not in env
        await h.runner.stop_all()
    run(scenario)


def test_modules_start_in_startup_order():
    started: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record):
            if getattr(record, "gw_event", None) is not None and \
                    record.gw_event.name == "MODULE_STARTED":
                started.append(record.gw_fields["MODULE"])

    handler = Recorder()
    logging.getLogger("gatewayd").addHandler(handler)
    logging.getLogger("gatewayd").setLevel(logging.INFO)

    async def scenario():
        h = Harness()
        sleeper = [PY, "-c", "import signal; signal.pause()"]
        await h.runner.apply(_deployment(
            1, c=_module(sleeper, startupOrder=0), a=_module(sleeper),
            b=_module(sleeper, startupOrder=1)))
        await h.runner.stop_all()
    try:
        run(scenario)
    finally:
        logging.getLogger("gatewayd").removeHandler(handler)
    assert started == ["c", "b", "a"]


def test_owner_of_knows_a_module_and_its_children(tmp_path):
    script = textwrap.dedent("""
        import json, os, signal, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        out = sys.argv[1]
        with open(out + ".tmp", "w") as f:
            json.dump({"pid": os.getpid(), "child": child.pid}, f)
        os.rename(out + ".tmp", out)
        signal.pause()
    """)

    async def scenario():
        h = Harness()
        out = tmp_path / "m.json"
        await h.runner.apply(_deployment(1, filt=_module([PY, "-c", script, str(out)])))
        pids = await h.file(out, "the module")
        assert h.runner.owner_of(pids["pid"]) == "filt"
        assert h.runner.owner_of(pids["child"]) == "filt"
        assert h.runner.owner_of(os.getpid()) is None
        await h.runner.stop_all()
        # its whole process group went with it (the grandchild dies on its own time: awaited)
        wait_until(lambda: _alive(pids["child"]), lambda alive: not alive, timeout=10,
                   what="the module's child gone with its process group")
        assert h.runner.owner_of(pids["pid"]) is None
    run(scenario)


def test_a_module_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    stubborn = textwrap.dedent("""
        import os, signal, sys
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(sys.argv[1] + ".tmp", "w").write('{"pid": %d}' % os.getpid())
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        while True:
            signal.pause()
    """)

    async def scenario():
        h = Harness(stop_grace_secs=0.2)
        out = tmp_path / "m.json"
        await h.runner.apply(_deployment(1, m=_module([PY, "-c", stubborn, str(out)])))
        pid = (await h.file(out, "the module"))["pid"]
        await h.runner.stop_all()
        assert not _alive(pid)
        assert _mod(h.runner.reported(), "m")["exitCode"] == 128 + signal.SIGKILL
    run(scenario)


def test_a_command_that_does_not_exist_fails_with_127():
    async def scenario():
        h = Harness()
        await h.runner.apply(_deployment(1, m=_module(["/nonexistent/module"],
                                                      restartPolicy="never")))
        r = await h.until(lambda r: _mod(r, "m").get("runtimeStatus") == "failed", "failed")
        assert _mod(r, "m")["exitCode"] == 127
    run(scenario)


@pytest.mark.skipif(os.geteuid() != 0, reason="settings.user is honoured only as root")
def test_settings_user_is_honoured_as_root():
    import pwd
    import tempfile
    nobody = pwd.getpwnam("nobody")
    # a shell, not this Python: nobody may not be able to reach this interpreter's directory
    says_uid = ["/bin/sh", "-c", 'id -u > "$0.tmp" && mv "$0.tmp" "$0" && exec sleep 600']

    async def scenario(where: Path):
        h = Harness()
        out = where / "uid"
        await h.runner.apply(_deployment(1, m=_module(
            [*says_uid, str(out)], settings={"command": [*says_uid, str(out)],
                                            "user": "nobody"})))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not out.exists():
            assert loop.time() < deadline, "the module did not write its uid"
            await asyncio.sleep(0.02)
        assert int(out.read_text()) == nobody.pw_uid
        await h.runner.stop_all()

    with tempfile.TemporaryDirectory() as where:
        Path(where).chmod(0o777)
        asyncio.run(asyncio.wait_for(scenario(Path(where)), 60))


RUNNER_IN_A_PROCESS = textwrap.dedent("""
    import asyncio, json, sys
    from gateway.modules.deployment import parse_deployment
    from gateway.modules.runner import ModuleRunner

    async def main():
        runner = ModuleRunner(env_for=lambda name: {})
        await runner.apply(parse_deployment(sys.stdin.buffer.read()))
        print("applied", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def test_modules_die_with_a_gatewayd_killed_by_sigkill(tmp_path):
    out = tmp_path / "m.json"
    doc = json.dumps({"version": 1, "modules": {"m": _module(_reporter(out))}}).encode()
    gatewayd = subprocess.Popen([PY, "-c", RUNNER_IN_A_PROCESS], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
    try:
        gatewayd.stdin.write(doc)
        gatewayd.stdin.close()
        assert gatewayd.stdout.readline() == b"applied\n"
        module = wait_until(lambda: _read_json(out), timeout=15, what="the module's report")
        assert _alive(module["pid"])
        gatewayd.send_signal(signal.SIGKILL)
        gatewayd.wait()
        wait_until(lambda: not _alive(module["pid"]), timeout=15,
                   what="the module to die with its gatewayd")
    finally:
        gatewayd.kill()
        gatewayd.wait()
