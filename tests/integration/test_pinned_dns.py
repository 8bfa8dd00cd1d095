"""Issue 6: cloud.dns_servers pins the resolvers; the last addresses that worked are kept in the
store, so a gateway whose DNS is gone still reaches the cloud. A real UDP DNS server (dnspython
builds its answers) on a loopback address, port 53."""

from __future__ import annotations

import random
import socket
import threading

import dns.message
import dns.rrset

HOST = "cloud.example.test"


class TinyDNS:
    """Answers A queries for HOST with 127.0.0.1, nothing else; runs until stop()."""

    def __init__(self) -> None:
        self.address = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.address, 53))
        self.queries = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            answer = dns.message.make_response(query)
            question = query.question[0]
            if question.name.to_text().rstrip(".") == HOST and question.rdtype == 1:
                answer.answer.append(dns.rrset.from_text(HOST + ".", 60, "IN", "A",
                                                         "127.0.0.1"))
            self.queries += 1
            try:
                self.sock.sendto(answer.to_wire(), peer)
            except OSError:  # stopped while answering
                return

    def stop(self) -> None:
        self.sock.close()


def test_pinned_resolvers_then_the_cached_address_when_dns_is_gone(cloud, gateways):
    dns_server = TinyDNS()
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
