"""Issue 6: cloud.dns_servers pins the resolvers; the last addresses that worked are kept in the
store, so a gateway whose DNS is gone still reaches the cloud. A real UDP DNS server (dnspython
builds its answers) on a loopback address, port 53."""

from __future__ import annotations

from tests.support.dns_server import DNSServer

HOST = "cloud.example.test"


def test_pinned_resolvers_then_the_cached_address_when_dns_is_gone(cloud, gateways):
    dns_server = DNSServer({HOST: ["127.0.0.1"]})
    gw = gateways(cloud_url=f"mqtt://{HOST}:{cloud.port}",
                  cloud={"dns_servers": [dns_server.address]})
    gw.start()
    status = gw.wait_status(lambda s: s["uplink"]["state"] == "online", what="online via DNS")
    assert status["uplink"]["address"] == f"127.0.0.1:{cloud.port} (pinned)"
    assert dns_server.queries >= 1
    dns_server.stop()

    gw.terminate()
    gw.start()  # the resolver is gone: the address that worked last is in the store
    status = gw.wait_status(lambda s: s["uplink"]["state"] == "online", what="online via cache")
    assert status["uplink"]["address"] == f"127.0.0.1:{cloud.port} (cache)"


def test_no_dns_and_nothing_cached_is_one_clear_reason(cloud, gateways):
    gw = gateways(cloud_url=f"mqtt://{HOST}:{cloud.port}",
                  cloud={"dns_servers": ["127.53.0.254"]})  # nobody answers there
    gw.start()
    status = gw.wait_status(lambda s: "cannot resolve" in s["uplink"]["last_error"],
                            what="the reason", timeout=60)
    assert "with cloud.dns_servers 127.53.0.254" in status["uplink"]["last_error"]
    assert "no address of cloud.example.test is cached yet" in status["uplink"]["last_error"]
    assert gw.log_text().count("cannot resolve") == 1, "one journal line, not one per attempt"
