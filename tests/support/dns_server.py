"""A tiny UDP DNS server on a loopback address, port 53 (where dnspython asks), for the tests.

dnspython builds the answers; the test sets the records and can make the server fail (SERVFAIL)
to stand for a site whose DNS is down, without waiting for a timeout.
"""

from __future__ import annotations

import random
import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DNSServer:
    """Answers A and AAAA from `records` ({name: [address, ...]}); SERVFAIL while `failing`."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.failing = False
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(20):  # a random 127.53.x.y, so that parallel tests do not collide
            self.address = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
            try:
                self.sock.bind((self.address, 53))
                break
            except OSError:
                continue
        else:
            raise OSError("no free loopback address for a DNS server")
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return  # stopped
            self.queries += 1
            query = dns.message.from_wire(data)
            answer = dns.message.make_response(query)
            if self.failing:
                answer.set_rcode(dns.rcode.SERVFAIL)
            else:
                self._answer(query.question[0], answer)
            try:
                self.sock.sendto(answer.to_wire(), peer)
            except OSError:
                return

    def _answer(self, question, answer: dns.message.Message) -> None:
        name = question.name.to_text().rstrip(".")
        if name not in self.records:
            answer.set_rcode(dns.rcode.NXDOMAIN)
            return
        want = dns.rdatatype.to_text(question.rdtype)
        found = [a for a in self.records[name] if (":" in a) == (want == "AAAA")]
        if found:
            answer.answer.append(dns.rrset.from_text(name + ".", 60, "IN", want, *found))

    def stop(self) -> None:
        self.sock.close()
