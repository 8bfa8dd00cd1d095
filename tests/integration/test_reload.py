"""SIGHUP (systemctl reload): a good file applies live where it can and names what needs a
restart; a bad file is refused and the daemon keeps running on the old configuration."""

from __future__ import annotations

import signal

from gateway.upstream.cloud_contract import registry_topic
from tests.support.clients import new_key, publish_retained, registry_doc


def test_reload_moves_the_uplink_and_refuses_a_bad_file(cloud, gateways):
    publish_retained(cloud.port, registry_topic("", "edge-1"), registry_doc(1, {"d": new_key()}))
    gw = gateways(cloud_url="mqtt://127.0.0.1:1")  # nothing listens there
    gw.start()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink failing")
    good = gw.config.read_text()

    gw.config.write_text(good.replace("mqtt://127.0.0.1:1", cloud.url)
                         .replace("time_to_live_secs = 7200", "time_to_live_secs = 600"))
    gw.proc.send_signal(signal.SIGHUP)
    status = gw.wait_status(lambda s: s["uplink"]["state"] == "online"
                            and s["registry_version"] == 1, what="uplink moved by reload")
    assert status["time_to_live_secs"] == 600
    line = gw.wait_log("reload: applied")
    assert "storage.time_to_live_secs" in line and "cloud.url" in line

    gw.config.write_text("[gateway\nthis is not toml")
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait_log("reload refused, the running configuration stays")
    assert gw.status()["uplink"]["state"] == "online"

    gw.config.write_text(good.replace("mqtt://127.0.0.1:1", cloud.url).replace(
        f"plain_port = {gw.plain_port}", f"plain_port = {gw.plain_port + 1}"))
    gw.proc.send_signal(signal.SIGHUP)
    log = gw.wait_log("needs a restart (systemctl restart gatewayd): listen.plain_port")
    assert gw.status()["listeners"] == [f"127.0.0.1:{gw.plain_port}"], "still bound as before"
    assert gw.proc.poll() is None and "Traceback" not in log
