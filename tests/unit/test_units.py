"""Systemd mode's parts that need no systemd: unit names, spec files through the real exec
shim, `systemctl show` output, /proc/PID/cgroup, and the template unit agreeing with the code.
(Units under a real systemd are the VM system test's.)"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.modules.deployment import parse_deployment
from gateway.modules.exec_shim import SPEC_VARIABLE
from gateway.modules.units import (
    SPEC_DIR,
    escape,
    module_of_cgroup,
    observed_exit,
    parse_show,
    spec_hash,
    spec_text,
    unescape,
    unit_name,
)

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["filter", "a+b", ".x", "a-b", "o'k", "x@y:z_1.2", "(p)%#*?!,=$"]


def _module(name: str = "filter", command: list[str] | None = None):
    doc = {"version": 1, "modules": {name: {"type": "process", "settings": {
        "command": command or ["/bin/true"]}, "env": {"A": {"value": "1 \"2\" $3"}}}}}
    return parse_deployment(json.dumps(doc).encode()).modules[name]


@pytest.mark.parametrize("name", NAMES)
def test_escape_is_systemd_escape_and_reverses(name):
    assert unescape(escape(name)) == name
    if shutil.which("systemd-escape"):
        real = subprocess.run(["systemd-escape", "--", name], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert escape(name) == real


def test_the_unit_is_the_template_instance():
    assert unit_name("filter") == "gatewayd-module@filter.service"
    assert unit_name("a+b") == "gatewayd-module@a\\x2bb.service"


def test_the_spec_file_is_one_line_of_base64_and_the_shim_runs_it(tmp_path):
    module = _module(command=[sys.executable, "-c",
                              "import json, os, sys; json.dump([sys.argv[1:], dict(os.environ)],"
                              " sys.stdout)", "arg with space"])
    text = spec_text(module, {"A": "1 \"2\" $3", "IOTEDGE_MODULEID": "filter"})
    key, _, value = text.rstrip("\n").partition("=")
    assert key == SPEC_VARIABLE and text.count("\n") == 1
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    env = {"PATH": "/usr/bin:/bin", key: value}  # what systemd hands the unit
    out = subprocess.run([sys.executable, "-m", "gateway.modules.exec_shim", "--unit", "filter"],
                         env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    argv, seen = json.loads(out.stdout)
    assert argv == ["arg with space"]
    assert seen["A"] == "1 \"2\" $3" and seen["IOTEDGE_MODULEID"] == "filter"
    assert SPEC_VARIABLE not in seen


def test_the_shim_refuses_a_spec_for_another_module():
    text = spec_text(_module("other"), {})
    value = text.strip().partition("=")[2]
    out = subprocess.run([sys.executable, "-m", "gateway.modules.exec_shim", "--unit", "filter"],
                         env={SPEC_VARIABLE: value}, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 126 and "names 'other'" in out.stderr


def test_the_spec_hash_follows_the_spec():
    a = spec_text(_module(), {"IOTEDGE_MODULEID": "filter"})
    b = spec_text(_module(), {"IOTEDGE_MODULEID": "filter", "X": "1"})
    assert spec_hash(a) == spec_hash(spec_text(_module(), {"IOTEDGE_MODULEID": "filter"}))
    assert spec_hash(a) != spec_hash(b)
    assert json.loads(base64.b64decode(a.strip().partition("=")[2]))["name"] == "filter"


SHOW = """Id=gatewayd-module@filter.service
ActiveState=failed
SubState=failed
MainPID=0
ExecMainCode=2
ExecMainStatus=9
ExecMainStartTimestampMonotonic=5000000
ExecMainExitTimestampMonotonic=7000000

Id=gatewayd-module@a\\x2bb.service
ActiveState=active
SubState=running
MainPID=1234
ExecMainCode=0
ExecMainStatus=0
ExecMainStartTimestampMonotonic=6000000
ExecMainExitTimestampMonotonic=0
"""


def test_systemctl_show_is_read_by_unit():
    units = parse_show(SHOW)
    assert set(units) == {"gatewayd-module@filter.service", "gatewayd-module@a\\x2bb.service"}
    assert units["gatewayd-module@a\\x2bb.service"]["MainPID"] == "1234"


def test_an_exit_is_seen_only_for_the_run_being_watched():
    units = parse_show(SHOW)
    filt, other = units["gatewayd-module@filter.service"], units["gatewayd-module@a\\x2bb.service"]
    assert observed_exit(filt, 5000000) == 128 + 9  # killed by SIGKILL, as Docker says 137
    assert observed_exit(filt, 4000000) is None  # another run than the one we started
    assert observed_exit(other, 6000000) is None  # still running
    exited = dict(filt, ExecMainCode="1", ExecMainStatus="3", ActiveState="inactive")
    assert observed_exit(exited, 5000000) == 3


@pytest.mark.parametrize("text, name", [
    ("0::/system.slice/system-gatewayd\\x2dmodule.slice/gatewayd-module@filter.service\n",
     "filter"),
    ("0::/system.slice/system-gatewayd\\x2dmodule.slice/gatewayd-module@a\\x2bb.service/x\n",
     "a+b"),
    ("12:pids:/system.slice/gatewayd-module@m.service\n1:name=systemd:/\n", "m"),
    ("0::/system.slice/gatewayd.service\n", None),
    ("0::/user.slice/user-0.slice/session-1.scope\n", None),
])
def test_the_cgroup_names_the_module(text, name):
    assert module_of_cgroup(text) == name


def test_a_cgroup_of_this_process_names_no_module():
    assert module_of_cgroup(Path("/proc/self/cgroup").read_text()) is None


def test_the_template_unit_agrees_with_the_code():
    unit = (ROOT / "systemd" / "gatewayd-module@.service").read_text()
    lines = dict(line.split("=", 1) for line in unit.splitlines()
                 if "=" in line and not line.startswith("#"))
    assert lines["EnvironmentFile"] == f"{SPEC_DIR}/%i.env"
    assert lines["ExecStart"].endswith("-m gateway.modules.exec_shim --unit %I")
    assert lines["Restart"] == "no"  # gatewayd applies the restart policy (units.py says why)
    assert lines["User"] != "gatewayd"  # a module must not read the store
    assert "[Install]" not in unit and "PartOf" not in unit  # outlives gatewayd's restarts


POLKIT_HARNESS = """
const rules = [];
const polkit = {Result: {YES: "yes", NOT_HANDLED: "not_handled"},
                addRule: (f) => rules.push(f)};
eval(require("fs").readFileSync(process.argv[1], "utf8"));
const cases = JSON.parse(process.argv[2]);
console.log(JSON.stringify(cases.map(([id, user, unit, verb]) => rules[0](
    {id: id, lookup: (k) => ({unit: unit, verb: verb})[k]}, {user: user}))));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node runs the polkit rule here")
def test_the_polkit_rule_allows_only_module_units():
    manage = "org.freedesktop.systemd1.manage-units"
    cases = [
        [manage, "gatewayd", "gatewayd-module@filter.service", "restart"],
        [manage, "gatewayd", "gatewayd-module@a\\x2bb.service", "stop"],
        [manage, "gatewayd", "gatewayd.service", "restart"],
        [manage, "gatewayd", "ssh.service", "stop"],
        [manage, "gatewayd", "gatewayd-module@x.service", "enable"],
        [manage, "nobody", "gatewayd-module@filter.service", "start"],
        ["org.freedesktop.systemd1.manage-unit-files", "gatewayd", "gatewayd-module@x.service",
         "start"],
    ]
    out = subprocess.run(["node", "-e", POLKIT_HARNESS, "--",
                          str(ROOT / "systemd" / "gatewayd-modules.rules"), json.dumps(cases)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == ["yes", "yes"] + ["not_handled"] * 5


def test_debian_installs_the_template_and_the_rule():
    rules = (ROOT / "debian" / "rules").read_text()
    assert "systemd/gatewayd-module@.service" in rules and "gatewayd-modules.rules" in rules


def test_the_package_ships_the_workload_socket_where_modules_reach_it():
    """gatewayd-module may traverse the runtime directory, not list it; the control socket is
    elsewhere (the store's directory, 0750)."""
    shipped = tomllib.loads((ROOT / "debian" / "gatewayd.toml").read_text())
    service = dict(line.split("=", 1) for line in
                   (ROOT / "systemd" / "gatewayd.service").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    socket = Path(shipped["modules"]["workload_socket"])
    assert socket.parent == Path("/run") / service["RuntimeDirectory"]
    assert int(service["RuntimeDirectoryMode"], 8) & 0o007 == 0o001
    assert "control" not in shipped  # so the socket is storage.path/control.sock
    assert Path(shipped["storage"]["path"]) == Path("/var/lib") / service["StateDirectory"]
    assert service["StateDirectoryMode"] == "0750"
