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


def test_what_needs_a_restart_keeps_its_old_value_until_the_restart(gateways):
    gw = gateways()
    gw.start()
    good = gw.config.read_text()
    restart_only = good + "\n[auth]\noffline_trust_secs = 600\n\n[metrics]\nport = 9\n"
    gw.config.write_text(restart_only)
    gw.proc.send_signal(signal.SIGHUP)
    first = "needs a restart (systemctl restart gatewayd): metrics.port, auth.offline_trust_secs"
    gw.wait_log(first)
    assert gw.status()["offline_trust"]["trust_secs"] == 0, "the running process keeps 0"

    # a second reload with one live change: nothing was restarted, so the same keys still wait
    assert "[log]" not in good
    gw.config.write_text(restart_only + '\n[log]\nlevel = "debug"\n')
    gw.proc.send_signal(signal.SIGHUP)
    log = gw.wait_log("reload: applied log.level")
    line = log[log.index("reload: applied log.level"):].splitlines()[0]
    assert "auth.offline_trust_secs" in line and "metrics.port" in line, line
    assert gw.status()["metrics"] is None, "no metrics listener until a restart"
    assert gw.proc.poll() is None and "Traceback" not in log
