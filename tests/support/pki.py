"""Certificates the tests make: a CA and a server certificate, written as PEM files."""

from __future__ import annotations

from pathlib import Path

from gateway.child import certs


def server_tls(workdir: Path, addresses: tuple[str, ...] = ("127.0.0.1",),
               names: tuple[str, ...] = ("localhost",)) -> tuple[Path, Path, Path]:
    """(CA file, certificate file, key file) of a fresh CA and a server certificate for
    `names` and `addresses`."""
    ca_key, ca_cert = certs.make_ca("gateway test CA")
    key, cert = certs.make_server_cert(ca_key, ca_cert, list(names), list(addresses))
    ca_file, cert_file, key_file = (workdir / name for name in ("ca.pem", "server.pem",
                                                                "server.key"))
    certs.write_pem(ca_file, cert=ca_cert)
    certs.write_pem(cert_file, cert=cert)
    certs.write_pem(key_file, key=key)
    return ca_file, cert_file, key_file
