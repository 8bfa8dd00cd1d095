"""Which module a process belongs to: the parsers on the odd texts /proc can hold, then the live
/proc with a real process tree."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from gateway.modules import peer


@pytest.mark.parametrize(("text", "ppid"), [
    ("1234 (python3) S 812 1234 1234 0 -1 4194560 100", 812),
    ("77 (a) b) S) R 5 77 77", 5),  # a command name may hold ") " itself
    ("9 (with space) S 1 9 9", 1),
    ("9 (bad", None),
    ("9 (x) S", None),
    ("9 (x) S notapid", None),
    ("", None),
])
def test_the_parent_is_counted_from_the_last_parenthesis(text, ppid):
    assert peer.parse_ppid(text) == ppid


def _parents(table: dict[int, int]):
    return lambda pid: table.get(pid)


def test_a_module_process_and_its_descendants_belong_to_it():
    tree = {500: 400, 400: 300, 300: 1, 301: 1}
    mains = {"filter": 300, "poller": 301}
    assert peer.owner_by_ancestry(300, mains, _parents(tree)) == "filter"
    assert peer.owner_by_ancestry(500, mains, _parents(tree)) == "filter"
    assert peer.owner_by_ancestry(301, mains, _parents(tree)) == "poller"


def test_an_orphan_a_stranger_and_an_exited_process_belong_to_no_module():
    tree = {600: 1, 700: 650}  # 600 was reparented to init; 650 has exited
    mains = {"filter": 300}
    assert peer.owner_by_ancestry(600, mains, _parents(tree)) is None
    assert peer.owner_by_ancestry(700, mains, _parents(tree)) is None
    assert peer.owner_by_ancestry(12345, mains, _parents(tree)) is None


def test_init_is_no_module_even_when_a_module_claims_pid_1():
    assert peer.owner_by_ancestry(1, {"odd": 1}, _parents({})) is None
    assert peer.owner_by_ancestry(5, {"odd": 1}, _parents({5: 1})) is None


def test_a_parent_loop_or_an_endless_chain_ends_with_no_module():
    assert peer.owner_by_ancestry(10, {"m": 99}, _parents({10: 11, 11: 10})) is None
    chain = {n: n + 1 for n in range(2, 10_000)}
    assert peer.owner_by_ancestry(2, {"m": 9_000}, _parents(chain)) is None


V2 = "0::/system.slice/system-gatewayd\\x2dmodule.slice/gatewayd-module@filter.service\n"
V1 = ("12:pids:/system.slice/system-gatewayd\\x2dmodule.slice/gatewayd-module@poller.service\n"
      "1:name=systemd:/system.slice/system-gatewayd\\x2dmodule.slice/"
      "gatewayd-module@poller.service\n")


@pytest.mark.parametrize(("text", "module"), [
    (V2, "filter"),
    (V1, "poller"),
    ("0::/system.slice/system-gatewayd\\x2dmodule.slice/gatewayd-module@opc\\x2dua.service\n",
     "opc-ua"),
    ("0::/system.slice/system-gatewayd\\x2dmodule.slice/gatewayd-module@filter.service/"
     "worker\n", "filter"),  # a delegated sub-cgroup
    ("0::/system.slice/gatewayd.service\n", None),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
    ("0::/system.slice/not-gatewayd-module@filter.service.d\n", None),
    ("12:pids:/system.slice/gatewayd-module@a.service\n1:name=systemd:/gatewayd-module@b.service",
     None),  # two hierarchies that disagree: neither
    ("", None),
    ("garbage", None),
])
def test_the_module_is_read_from_its_unit_in_the_cgroup(text, module):
    assert peer.module_of_cgroup(text) == module


def test_the_live_proc_ties_a_grandchild_to_the_module_that_started_it():
    script = ("import subprocess, sys\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
              " stdin=subprocess.PIPE)\n"
              "print(p.pid, flush=True)\n"
              "sys.stdin.read()\n"
              "p.stdin.close(); p.wait()\n")
    main = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(main.stdout.readline())
        mains = {"filter": main.pid}
        assert peer.read_parent(grandchild) == main.pid
        assert peer.owner_in_process_mode(grandchild, mains) == "filter"
        assert peer.owner_in_process_mode(main.pid, mains) == "filter"
        assert peer.owner_in_process_mode(os.getpid(), mains) is None
    finally:
        main.stdin.close()
        main.wait(10)
    assert peer.owner_in_process_mode(grandchild, {"filter": main.pid}) is None  # both exited


def test_an_exited_pid_has_no_parent_and_no_cgroup():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(done.stdout)
    assert peer.read_parent(pid) is None
    assert peer.read_cgroup(pid) == ""
    assert peer.owner_in_systemd_mode(pid) is None


def test_this_process_has_a_cgroup_but_is_no_module_unit():
    assert peer.read_cgroup(os.getpid()).strip()
    assert peer.owner_in_systemd_mode(os.getpid()) is None


def test_peer_credentials_name_the_process_at_the_other_end():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer.peer_credentials(left) == peer.PeerCred(os.getpid(), os.getuid(),
                                                            os.getgid())
