"""What a reload applies live and what keeps its old value until a restart, on real files."""

from __future__ import annotations

import pytest

from gateway.config import load_config
from gateway.daemon.reload import changed_keys, running_config, split_live

BASE = """
[gateway]
id = "edge-1"
hub_hostname = "hub.example.net"

[listen]
port = 0
plain_port = 1883

[storage]
path = "store"
time_to_live_secs = 7200
max_bytes = 0

[cloud]
url = "mqtt://127.0.0.1:1883"

[auth]
offline_trust_secs = 0

[metrics]
port = 0
"""


@pytest.fixture(autouse=True)
def no_storage_env(monkeypatch):
    monkeypatch.delenv("storageFolder", raising=False)


def configs(tmp_path, **changes: tuple[str, str]):
    (tmp_path / "old.toml").write_text(BASE)
    body = BASE
    for before, after in changes.values():
        assert before in body
        body = body.replace(before, after)
    (tmp_path / "new.toml").write_text(body)
    return load_config(tmp_path / "old.toml"), load_config(tmp_path / "new.toml")


def test_restart_only_values_stay_and_live_ones_apply(tmp_path):
    old, new = configs(
        tmp_path,
        ttl=("time_to_live_secs = 7200", "time_to_live_secs = 60"),
        quota=("max_bytes = 0", "max_bytes = 1000000"),
        url=("127.0.0.1:1883", "127.0.0.1:1884"),
        trust=("offline_trust_secs = 0", "offline_trust_secs = 600"),
        metrics=("[metrics]\nport = 0", "[metrics]\nport = 9464"),
        port=("plain_port = 1883", "plain_port = 1884"),
    )
    live, restart = split_live(changed_keys(old, new))
    assert sorted(live) == ["cloud.port", "cloud.url", "storage.time_to_live_secs"]
    assert sorted(restart) == ["auth.offline_trust_secs", "listen.plain_port",
                               "metrics.port", "storage.max_bytes"]
    running = running_config(old, new)
    assert running.storage.time_to_live_secs == 60 and running.cloud.url == new.cloud.url
    assert running.auth == old.auth and running.metrics == old.metrics
    assert running.listen == old.listen and running.storage.max_bytes == 0
    again, still = split_live(changed_keys(running, new))
    assert again == [] and sorted(still) == sorted(restart), "named again until the restart"


def test_a_file_without_restart_only_changes_is_taken_whole(tmp_path):
    old, new = configs(tmp_path, ttl=("time_to_live_secs = 7200", "time_to_live_secs = 60"))
    assert running_config(old, new) == new
