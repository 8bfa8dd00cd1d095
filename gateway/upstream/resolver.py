"""Where the cloud broker is: pinned resolvers, and the last addresses that worked.

A gateway often sits behind a site router whose DNS is the least reliable thing on the network,
and it may boot with no DNS at all. `cloud.dns_servers` pins the resolvers used for the cloud's
host name (dnspython, A and AAAA, short timeouts); every answer that led to a connection is kept
in the store, so that a gateway that cannot resolve — pinned resolvers down, or the system's —
still dials the addresses that worked last. TLS still checks the certificate against the host
name: only the TCP connection goes to the address (see `Uplink._dial`).
"""

from __future__ import annotations

import ipaddress
import json
import socket

from gateway.errors import UnavailableError
from gateway.storage import keyspace as ks
from gateway.storage.store import Store

TIMEOUT_SECS = 3.0


class ResolveError(UnavailableError):
    """No address for the host; the message is the journal's reason."""


class CloudResolver:
    def __init__(self, store: Store, host: str, port: int, dns_servers: list[str]) -> None:
        self._store = store
        self.host = host
        self.port = port
        self.dns_servers = dns_servers
        self.last_source = ""  # "literal", "pinned", "system" or "cache", for status

    def resolve(self) -> list[str]:
        """Addresses to dial, best first; blocking (run it in an executor)."""
        if _is_literal(self.host):
            self.last_source = "literal"
            return [self.host]
        try:
            found = self._pinned() if self.dns_servers else self._system()
        except ResolveError as exc:
            cached = self.cached()
            if not cached:
                raise ResolveError(f"{exc}; no address of {self.host} is cached yet") from None
            self.last_source = "cache"
            return cached
        self.last_source = "pinned" if self.dns_servers else "system"
        return found

    def worked(self, address: str, addresses: list[str]) -> None:
        """Remember the answer that led to a connection, the one that worked first."""
        ordered = [address] + [a for a in addresses if a != address]
        if ordered != self.cached():
            self._store.put(self._store.meta, ks.dns_key(self.host), json.dumps(ordered).encode(),
                            sync=False)  # a hint for the next start, not a promise

    def cached(self) -> list[str]:
        raw = self._store.meta.get(ks.dns_key(self.host))
        return json.loads(raw) if raw else []

    def _pinned(self) -> list[str]:
        # dnspython only when cloud.dns_servers is set: importing it costs ~4 MiB of RSS that a
        # gateway using the system's resolver never needs (issue 18)
        import dns.exception
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = self.dns_servers
        resolver.timeout = TIMEOUT_SECS
        resolver.lifetime = TIMEOUT_SECS * 2
        out: list[str] = []
        errors = []
        for rdtype in ("A", "AAAA"):
            try:
                out += [r.to_text() for r in resolver.resolve(self.host, rdtype)]
            except (dns.exception.DNSException, OSError) as exc:
                errors.append(f"{rdtype}: {type(exc).__name__}")
        if not out:
            raise ResolveError(f"cannot resolve {self.host} with cloud.dns_servers "
                               f"{', '.join(self.dns_servers)} ({'; '.join(errors)})")
        return out

    def _system(self) -> list[str]:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ResolveError(f"cannot resolve {self.host}: {exc.strerror}") from None
        out: list[str] = []
        for info in infos:
            if info[4][0] not in out:
                out.append(info[4][0])
        return out


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
