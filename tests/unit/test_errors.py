"""One error hierarchy: every exception class in gateway/ derives from GatewayError, each exit code
is defined once in gateway/errors.py, and every command line ends a GatewayError the same way."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import socket
from pathlib import Path

import pytest

import gateway
from gateway import errors
from gateway.cli import exits, gatewayctl, gatewayd
from gateway.errors import GatewayError
from gateway.log import LOGGER

PACKAGE = Path(gateway.__file__).parent


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], "gateway."))


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException):
                found.append(cls)
    return found


def test_the_walk_finds_the_package_s_errors():
    names = {f"{c.__module__}.{c.__qualname__}" for c in _exception_classes()}
    # a walk that imported nothing would pass the next test vacuously
    assert {"gateway.mqtt.codec.ProtocolError", "gateway.hub.twins.TwinError",
            "gateway.upstream.uplink.UplinkFailure",
            "gateway.operator.errors.OperatorError"} <= names


def test_every_exception_class_in_the_package_derives_from_the_root():
    strays = [f"{c.__module__}.{c.__qualname__}{tuple(b.__name__ for b in c.__bases__)}"
              for c in _exception_classes() if not issubclass(c, GatewayError)]
    assert not strays, f"derive these from gateway.errors.GatewayError: {strays}"


def test_every_error_has_a_sysexits_code():
    codes = {v for k, v in vars(errors).items() if k.startswith("EX_")}
    for cls in _exception_classes():
        assert cls.exit_code in codes, f"{cls.__qualname__}.exit_code {cls.exit_code}"


def test_exit_codes_are_defined_once_in_errors_py():
    """No other module assigns a number to an EX_ name or to exit_code: it names one from errors."""
    assert len({v for k, v in vars(errors).items() if k.startswith("EX_")}) == len(
        [k for k in vars(errors) if k.startswith("EX_")]), "two EX_ names share a code"
    assert errors.ConfigError.exit_code == 78  # the unit's RestartPreventExitStatus=78
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Assign | ast.AnnAssign):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
                value = node.value.value if isinstance(node.value, ast.Constant) else None
                literal = isinstance(value, int) and value != 0  # 0 is success, not an error
                if (name.startswith("EX_") or name == "exit_code") and literal:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    assert not offenders, offenders


def test_the_peer_s_fault_is_kept_apart_from_ours():
    from gateway.mqtt import codec, mqtt5

    assert issubclass(codec.ProtocolError, errors.PeerError)
    assert issubclass(mqtt5.MalformedPacket, errors.PeerError)
    assert issubclass(codec.LocalProtocolError, errors.InternalError)
    assert not issubclass(codec.LocalProtocolError, errors.PeerError)
    assert not issubclass(codec.ProtocolError, errors.InternalError)
    assert codec.ProtocolError("x").exit_code == errors.EX_PROTOCOL
    assert codec.LocalProtocolError("x").exit_code == errors.EX_SOFTWARE


@pytest.mark.parametrize("cls", [
    c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, GatewayError)])
def test_run_ends_with_the_class_s_exit_code_and_its_message_on_stderr(cls, capsys):
    def command() -> int:
        raise cls("what is wrong; what to do")

    assert exits.run("prog", command) == cls.exit_code
    assert capsys.readouterr().err == "prog: what is wrong; what to do\n"


def test_run_passes_a_command_s_own_status_through():
    assert exits.run("prog", lambda: 3) == 3


# -- each command line, driven through main() with real files and sockets ------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gatewayd.toml"
    path.write_text(f"""
[gateway]
id = "edge-1"
hub_hostname = "hub.example.net"

[listen]
port = 0

[storage]
path = "{tmp_path / 'data'}"

[control]
socket = "{tmp_path / 'nobody-listens.sock'}"
""")
    return path


@pytest.fixture(autouse=True)
def not_under_systemd(monkeypatch):
    """gatewayd writes to the journal under systemd; here its line must reach stderr. Its
    logger is put back as it was, so that later tests do not write to this test's stderr."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    saved = LOGGER.handlers[:], LOGGER.level, LOGGER.propagate
    yield
    LOGGER.handlers[:], LOGGER.level, LOGGER.propagate = saved[0], saved[1], saved[2]


def test_gatewayd_ends_a_config_error_with_78_and_its_line(tmp_path, capsys):
    missing = tmp_path / "absent.toml"
    assert gatewayd.main(["--config", str(missing)]) == errors.EX_CONFIG
    err = capsys.readouterr().err
    assert f"gatewayd: {missing}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, expected", [
    ([], gatewayd.DEFAULT_CONFIG),
    (["--config", "/etc/site.toml"], "/etc/site.toml"),
    (["--config=/etc/site.toml"], "/etc/site.toml"),  # argparse's form, through argparse
])
def test_gatewayd_reads_its_config_argument_in_every_form(argv, expected):
    assert gatewayd.config_argument(argv) == expected


@pytest.mark.parametrize("argv", [["--config"], ["--config", "--x"], ["--bogus"],
                                  ["--config", "a.toml", "extra"]])
def test_gatewayd_refuses_other_arguments_with_argparse_usage(argv, capsys):
    with pytest.raises(SystemExit) as ended:
        gatewayd.config_argument(argv)
    assert ended.value.code == 2 and "usage: gatewayd" in capsys.readouterr().err


def test_gatewayctl_config_check_ends_a_config_error_with_78(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nid = 7\n")
    assert gatewayctl.main(["config", "check", str(bad)]) == errors.EX_CONFIG
    assert capsys.readouterr().err.startswith(f"gatewayctl: {bad}")


def test_gatewayctl_ends_an_absent_daemon_with_69(config_file, capsys):
    assert gatewayctl.main(["status", "--config", str(config_file)]) == errors.EX_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.startswith("gatewayctl: cannot reach gatewayd at ") and "nobody-listens" in err


def test_the_cloud_commands_end_a_usage_error_with_64(capsys):
    assert gatewayctl.main(["twin", "show", "dev-1"]) == errors.EX_USAGE
    assert capsys.readouterr().err == (
        "gatewayctl: say where the cloud broker is: --cloud URL or --config FILE\n")


def test_the_cloud_commands_end_an_absent_broker_with_69(capsys):
    with socket.socket() as closed:  # a port that was just free: nothing listens on it
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code = gatewayctl.main(["twin", "show", "dev-1", "--cloud", f"mqtt://127.0.0.1:{port}"])
    assert code == errors.EX_UNAVAILABLE
    assert capsys.readouterr().err.startswith("gatewayctl: cannot reach the cloud broker at ")
