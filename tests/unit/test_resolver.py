"""CloudResolver on a real store, against a real DNS server on loopback: pinned servers first,
then the last addresses that worked, kept across restarts."""

from __future__ import annotations

import pytest

from gateway.errors import UnavailableError
from gateway.upstream.resolver import CloudResolver, ResolveError
from tests.support.dns_server import DNSServer

HOST = "cloud.example.test"


@pytest.fixture
def dns_server():
    server = DNSServer({HOST: ["192.0.2.10", "2001:db8::10"]})  # one each: an rrset has no order
    yield server
    server.stop()



def test_an_address_literal_needs_no_dns(reopen):
    for literal in ("192.0.2.1", "2001:db8::1"):
        resolver = CloudResolver(reopen(), literal, 8883, ["127.0.0.1"])
        assert resolver.resolve() == [literal]
        assert resolver.last_source == "literal"


def test_pinned_servers_answer_a_then_aaaa(reopen, dns_server):
    resolver = CloudResolver(reopen(), HOST, 8883, [dns_server.address])
    assert resolver.resolve() == ["192.0.2.10", "2001:db8::10"]
    assert resolver.last_source == "pinned"
    assert dns_server.queries == 2, "one A and one AAAA query"


def test_without_pinned_servers_the_system_resolves(reopen):
    resolver = CloudResolver(reopen(), "localhost", 8883, [])  # /etc/hosts: no DNS server
    addresses = resolver.resolve()
    assert addresses and set(addresses) <= {"127.0.0.1", "::1"}
    assert resolver.last_source == "system"


def test_nothing_cached_and_no_answer_says_so(reopen, dns_server):
    dns_server.failing = True
    resolver = CloudResolver(reopen(), HOST, 8883, [dns_server.address])
    with pytest.raises(ResolveError) as info:
        resolver.resolve()
    message = str(info.value)
    assert f"cannot resolve {HOST} with cloud.dns_servers {dns_server.address}" in message
    assert "no address of cloud.example.test is cached yet" in message
    assert isinstance(info.value, UnavailableError)


def test_an_unknown_name_is_refused_too(reopen, dns_server):
    resolver = CloudResolver(reopen(), "other.example.test", 8883, [dns_server.address])
    with pytest.raises(ResolveError, match="cannot resolve other.example.test"):
        resolver.resolve()


def test_the_address_that_worked_is_dialled_when_dns_is_gone(reopen, dns_server):
    resolver = CloudResolver(reopen(), HOST, 8883, [dns_server.address])
    addresses = resolver.resolve()
    resolver.worked("2001:db8::10", addresses)
    assert resolver.cached() == ["2001:db8::10", "192.0.2.10"], "the one that worked goes first"
    dns_server.failing = True
    assert resolver.resolve() == ["2001:db8::10", "192.0.2.10"]
    assert resolver.last_source == "cache"
    dns_server.failing = False
    assert resolver.resolve()[0] == "192.0.2.10", "a live answer wins over the cache"
    assert resolver.last_source == "pinned"


def test_the_last_good_addresses_survive_a_restart(reopen, dns_server):
    resolver = CloudResolver(reopen(), HOST, 8883, [dns_server.address])
    resolver.worked("192.0.2.10", resolver.resolve())
    dns_server.stop()  # the site's DNS is gone when the gateway comes back

    restarted = CloudResolver(reopen(), HOST, 8883, ["127.0.0.1"])
    assert restarted.cached() == ["192.0.2.10", "2001:db8::10"]
    other = CloudResolver(reopen(), "another.example.test", 8883, [])
    assert other.cached() == [], "addresses are kept per host"
