"""load_config on real files: defaults, paths, the environment override and every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import SCHEMA, load_config
from gateway.errors import ConfigError

MINIMAL = """
[gateway]
id = "edge-1"
hub_hostname = "hub.example.net"

[listen]
port = 0
"""


@pytest.fixture(autouse=True)
def no_storage_env(monkeypatch):
    monkeypatch.delenv("storageFolder", raising=False)


def write(tmp_path: Path, body: str, name: str = "gatewayd.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def refusal(tmp_path: Path, body: str) -> str:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.message
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    assert info.value.exit_code == 78
    return message


def with_listen(extra: str) -> str:
    return MINIMAL.replace("port = 0\n", extra)


# -- defaults and conversions -----------------------------------------------------------------


def test_minimal_file_takes_the_documented_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.gateway.id == "edge-1"
    assert cfg.gateway.hub_hostname == "hub.example.net"
    assert cfg.listen.host == "0.0.0.0"
    assert cfg.listen.port == 0
    assert cfg.listen.tls_cert is None and cfg.listen.client_ca_file is None
    assert cfg.listen.plain_port == 0
    assert cfg.listen.https_port == 0  # the 443 head is off unless asked for
    assert cfg.listen.max_message_bytes == 262144
    assert cfg.listen.max_connections == 1000
    assert cfg.storage.path == Path("/var/lib/gatewayd")
    assert cfg.storage.time_to_live_secs == 7200
    assert cfg.storage.commit_interval_ms == 100
    assert cfg.storage.commit_max_messages == 256
    assert not cfg.cloud.enabled
    assert cfg.cloud.client_id == "edge-1"
    assert cfg.cloud.inflight_window == 100
    assert cfg.cloud.keepalive_secs == 30
    assert cfg.cloud.reconnect_min_secs == 1.0
    assert cfg.cloud.reconnect_max_secs == 60.0
    assert cfg.control.socket == Path("/var/lib/gatewayd/control.sock")
    assert cfg.log.level == "info"
    assert cfg.limits.twin_updates_per_sec == 50.0
    assert cfg.limits.routed_messages_per_sec == 100.0
    assert cfg.limits.max_outstanding_per_child == 128
    assert cfg.source == (tmp_path / "gatewayd.toml").absolute()


def test_settings_are_immutable(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(AttributeError):
        cfg.listen.port = 1  # type: ignore[misc]


def test_full_valid_file(tmp_path):
    for name in ("server.pem", "server.key", "children-ca.pem", "cloud-ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("x")
    body = """
[gateway]
id = "edge-1.site:A_b"
hub_hostname = "myhub.azure-devices.net"

[listen]
host = "::"
port = 8883
tls_cert = "server.pem"
tls_key = "server.key"
client_ca_file = "children-ca.pem"
plain_port = 1883
max_message_bytes = 1024
max_connections = 50

[storage]
path = "/srv/gw"
time_to_live_secs = 60
commit_interval_ms = 5
commit_max_messages = 10

[cloud]
url = "mqtts://broker.example.net"
prefix = "site/7/"
client_id = "gw-7"
ca_file = "cloud-ca.pem"
cert_file = "c.pem"
key_file = "c.key"
username = "u"
password = "p"
inflight_window = 20
keepalive_secs = 60
reconnect_min_secs = 2
reconnect_max_secs = 2.5

[control]
socket = "/run/gatewayd/control.sock"

[log]
level = "debug"
"""
    cfg = load_config(write(tmp_path, body))
    assert cfg.listen.tls_cert == tmp_path / "server.pem"
    assert cfg.listen.client_ca_file == tmp_path / "children-ca.pem"
    assert cfg.listen.host == "::"
    assert cfg.storage.path == Path("/srv/gw")
    assert cfg.cloud.enabled
    assert (cfg.cloud.scheme, cfg.cloud.host, cfg.cloud.port, cfg.cloud.tls) == (
        "mqtts",
        "broker.example.net",
        8883,
        True,
    )
    assert cfg.cloud.client_id == "gw-7"
    assert cfg.cloud.cert_file == tmp_path / "c.pem"
    assert cfg.cloud.reconnect_min_secs == 2.0 and isinstance(cfg.cloud.reconnect_min_secs, float)
    assert cfg.control.socket == Path("/run/gatewayd/control.sock")
    assert cfg.log.level == "debug"
    assert "'p'" not in repr(cfg.cloud)


def test_relative_paths_resolve_against_the_config_directory(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    body = MINIMAL + '\n[storage]\npath = "var/store"\n'
    cfg = load_config(write(conf_dir, body))
    assert cfg.storage.path == conf_dir.absolute() / "var" / "store"
    assert cfg.control.socket == conf_dir.absolute() / "var" / "store" / "control.sock"


def test_relative_config_path_is_made_absolute(tmp_path, monkeypatch):
    write(tmp_path, MINIMAL + '\n[control]\nsocket = "ctl.sock"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config("gatewayd.toml")
    assert cfg.control.socket == tmp_path / "ctl.sock"
    assert cfg.source == tmp_path / "gatewayd.toml"


def test_storage_folder_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("storageFolder", str(tmp_path / "from-env"))
    cfg = load_config(write(tmp_path, MINIMAL + '\n[storage]\npath = "/srv/ignored"\n'))
    assert cfg.storage.path == tmp_path / "from-env"
    assert cfg.control.socket == tmp_path / "from-env" / "control.sock"


def test_empty_storage_folder_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("storageFolder", "")
    cfg = load_config(write(tmp_path, MINIMAL + '\n[storage]\npath = "/srv/gw"\n'))
    assert cfg.storage.path == Path("/srv/gw")


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "tls"),
    [
        ("mqtt://broker", "mqtt", "broker", 1883, False),
        ("mqtt://broker:1884", "mqtt", "broker", 1884, False),
        ("mqtts://10.0.0.5", "mqtts", "10.0.0.5", 8883, True),
        ("mqtts://broker.example.net:443/", "mqtts", "broker.example.net", 443, True),
        ("mqtt://[::1]:1883", "mqtt", "::1", 1883, False),
    ],
)
def test_cloud_url_parsing(tmp_path, url, scheme, host, port, tls):
    cfg = load_config(write(tmp_path, MINIMAL + f'\n[cloud]\nurl = "{url}"\n'))
    assert (cfg.cloud.scheme, cfg.cloud.host, cfg.cloud.port, cfg.cloud.tls) == (
        scheme,
        host,
        port,
        tls,
    )
    assert cfg.cloud.url == url


def test_schema_sections_match_the_settings():
    assert list(SCHEMA) == ["gateway", "listen", "storage", "cloud", "control", "log", "auth",
                            "metrics", "limits", "modules"]


# -- refusals ---------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message.startswith(f"{path}: cannot read")
    assert "No such file" in info.value.message


def test_not_toml_names_line_and_column(tmp_path):
    message = refusal(tmp_path, MINIMAL + "\n[other\n")
    assert "not valid TOML" in message
    assert "line 9" in message and "column" in message


def test_example_port_message(tmp_path):
    message = refusal(tmp_path, with_listen('port = "abc"\n'))
    assert message.endswith('listen.port: expected an integer 0..65535, got "abc"')


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (with_listen("port = 70000\n"), "listen.port: expected an integer 0..65535, got 70000"),
        (with_listen("port = true\n"), "listen.port: expected an integer 0..65535, got true"),
        (with_listen("port = 1.5\n"), "listen.port: expected an integer 0..65535, got 1.5"),
        (with_listen("port = 0\nplain_port = -1\n"), "listen.plain_port: expected an integer"),
        (with_listen("port = 0\nmax_message_bytes = 127\n"), "listen.max_message_bytes: expected"),
        (with_listen('port = 0\nhost = "no spaces"\n'), "listen.host: expected a host name or IP"),
        (
            MINIMAL + "[storage]\ntime_to_live_secs = 0\n",
            "storage.time_to_live_secs: expected an integer 1..2147483647, got 0",
        ),
        (
            MINIMAL + "[storage]\ncommit_interval_ms = 60001\n",
            "storage.commit_interval_ms: expected an integer 1..60000",
        ),
        (MINIMAL + "[storage]\ncommit_max_messages = 0\n", "storage.commit_max_messages: expected"),
        (MINIMAL + '[storage]\npath = ""\n', "storage.path: expected a non-empty path"),
        (MINIMAL + '[cloud]\nprefix = "site"\n', "cloud.prefix: expected a topic prefix"),
        (MINIMAL + '[cloud]\nprefix = "a/+/"\n', "cloud.prefix: expected a topic prefix"),
        (MINIMAL + "[cloud]\ninflight_window = 0\n", "cloud.inflight_window: expected"),
        (MINIMAL + "[cloud]\nkeepalive_secs = 4\n", "cloud.keepalive_secs: expected"),
        (
            MINIMAL + "[cloud]\nreconnect_min_secs = 0\n",
            "cloud.reconnect_min_secs: expected a number > 0, got 0",
        ),
        (MINIMAL + "[cloud]\nreconnect_min_secs = nan\n", "cloud.reconnect_min_secs: expected"),
        (
            MINIMAL + "[cloud]\nreconnect_min_secs = 5\nreconnect_max_secs = 4.0\n",
            "cloud.reconnect_max_secs: expected a number >= cloud.reconnect_min_secs (5), got 4",
        ),
        (MINIMAL + "[cloud]\nusername = 3\n", "cloud.username: expected a string, got 3"),
        (MINIMAL + '[log]\nlevel = "trace"\n', "log.level: expected one of debug, info, warning"),
        (
            MINIMAL + "[limits]\ntwin_updates_per_sec = -1\n",
            "limits.twin_updates_per_sec: expected a number 0..inf, got -1",
        ),
        (
            MINIMAL + '[limits]\nrouted_messages_per_sec = "fast"\n',
            "limits.routed_messages_per_sec: expected a number",
        ),
        (
            MINIMAL + "[limits]\nmax_outstanding_per_child = 1\n",
            "limits.max_outstanding_per_child: expected an integer 2..65535, got 1",
        ),
        (MINIMAL + "[control]\nsocket = []\n", "control.socket: expected a path"),
        (
            with_listen("prot = 1\n"),
            "unknown key 'listen.prot' (known: host, port, tls_cert, tls_key",
        ),
        (MINIMAL + "[logs]\nlevel = 1\n", "unknown section [logs] (known: gateway, listen"),
        (MINIMAL.replace('id = "edge-1"\n', ""), "gateway.id is required"),
        ('[listen]\nport = 0\n', "gateway.id is required"),
        (MINIMAL.replace('hub_hostname = "hub.example.net"\n', ""), "gateway.hub_hostname is req"),
        (MINIMAL.replace('"edge-1"', '"edge 1"'), 'gateway.id: expected 1..128 characters'),
        (MINIMAL.replace('"edge-1"', '""'), "gateway.id: expected 1..128 characters"),
        (MINIMAL.replace('"edge-1"', '"' + "a" * 129 + '"'), "gateway.id: expected 1..128"),
        (MINIMAL.replace('"hub.example.net"', '"hub_x"'), "gateway.hub_hostname: expected a h"),
        ('gateway = 3\n', "gateway: expected a table [gateway], got 3"),
    ],
)
def test_bad_values_name_the_key(tmp_path, body, expected):
    message = refusal(tmp_path, body)
    assert expected in message


def test_unknown_key_inside_a_section_is_qualified(tmp_path):
    body = MINIMAL.replace('[listen]\n', '[listen]\nlog = 3\n')
    assert "unknown key 'listen.log' (known: host, port" in refusal(tmp_path, body)


def test_tls_listener_needs_cert_and_key(tmp_path):
    message = refusal(tmp_path, with_listen("port = 8883\n"))
    assert "listen.tls_cert is required when listen.port > 0" in message
    (tmp_path / "s.pem").write_text("x")
    message = refusal(tmp_path, with_listen('port = 8883\ntls_cert = "s.pem"\n'))
    assert "listen.tls_key is required when listen.port > 0" in message


def test_https_listener_needs_cert_and_key_and_its_own_port(tmp_path):
    message = refusal(tmp_path, with_listen("port = 0\nhttps_port = 443\n"))
    assert "listen.tls_cert is required when listen.https_port > 0" in message
    for name in ("s.pem", "s.key"):
        (tmp_path / name).write_text("x")
    files = 'tls_cert = "s.pem"\ntls_key = "s.key"\n'
    message = refusal(tmp_path, with_listen(f"port = 8883\nhttps_port = 8883\n{files}"))
    assert "listen.https_port 8883 is already listen.port" in message
    cfg = load_config(write(tmp_path, with_listen(f"port = 0\nhttps_port = 443\n{files}")))
    assert cfg.listen.https_port == 443


def test_amqp_listener_is_off_by_default_and_needs_cert_key_and_its_own_port(tmp_path):
    assert load_config(write(tmp_path, with_listen("port = 0\n"))).listen.amqp_port == 0
    message = refusal(tmp_path, with_listen("port = 0\namqp_port = 5671\n"))
    assert "listen.tls_cert is required when listen.amqp_port > 0" in message
    for name in ("s.pem", "s.key"):
        (tmp_path / name).write_text("x")
    files = 'tls_cert = "s.pem"\ntls_key = "s.key"\n'
    message = refusal(tmp_path, with_listen(f"port = 0\nhttps_port = 443\namqp_port = 443\n"
                                            f"{files}"))
    assert "listen.amqp_port 443 is already another listener's port" in message
    cfg = load_config(write(tmp_path, with_listen(f"port = 0\namqp_port = 5671\n{files}")))
    assert cfg.listen.amqp_port == 5671


def test_tls_listener_is_the_default(tmp_path):
    message = refusal(tmp_path, MINIMAL.replace("[listen]\nport = 0\n", ""))
    assert "listen.tls_cert is required" in message


def test_files_must_exist(tmp_path):
    (tmp_path / "s.pem").write_text("x")
    message = refusal(tmp_path, with_listen('port = 8883\ntls_cert = "s.pem"\ntls_key = "s.key"\n'))
    assert message.endswith(f"listen.tls_key: {tmp_path / 's.key'} does not exist")
    message = refusal(tmp_path, MINIMAL + '[cloud]\nca_file = "."\n')
    assert "cloud.ca_file: " in message and "is not a regular file" in message
    message = refusal(tmp_path, with_listen('port = 0\nclient_ca_file = "ca.pem"\n'))
    assert "listen.client_ca_file: " in message


def test_cloud_cert_and_key_go_together(tmp_path):
    (tmp_path / "c.pem").write_text("x")
    message = refusal(tmp_path, MINIMAL + '[cloud]\ncert_file = "c.pem"\n')
    assert "cloud.cert_file and cloud.key_file must be set together" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://broker",
        "broker:1883",
        "mqtt://",
        "mqtt://broker:99999",
        "mqtt://broker:0",
        "mqtt://broker/path",
        "mqtt://user@broker",
        "mqtt://broker?x=1",
        "mqtt://bad host",
    ],
)
def test_bad_cloud_urls(tmp_path, url):
    message = refusal(tmp_path, MINIMAL + f'[cloud]\nurl = "{url}"\n')
    assert f'cloud.url: expected "mqtt://host[:port]" or "mqtts://host[:port]", got "{url}"' in (
        message
    )
