"""Certificates for the gateway's TLS listener, for X.509 children and for tests.

The .deb's first install, `gatewayctl` and the test suite all need a CA, a server certificate and
client certificates without reaching for openssl on the command line. EC P-256 keys keep key
generation and handshakes fast on a Raspberry Pi.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey

# Issue certificates valid from a little in the past: a Pi without an RTC may boot with its clock
# behind the machine that issued them.
_BACKDATE = datetime.timedelta(hours=1)


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(common_name: str, days: int = 3650) -> tuple[PrivateKey, x509.Certificate]:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = new_key()
    name = _name(common_name)
    builder = (
        _base(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    return key, builder.sign(key, hashes.SHA256())


def make_server_cert(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    hostnames: list[str],
    ips: list[str],
    days: int = 825,  # the longest lifetime TLS clients such as Apple's accept
) -> tuple[PrivateKey, x509.Certificate]:
    """A TLS server certificate; children check the host name they dial against its SANs."""
    if not hostnames and not ips:
        raise ValueError("a server certificate needs at least one host name or IP address")
    key = new_key()
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        _end_entity(_name(hostnames[0] if hostnames else ips[0]), key, ca_cert.subject, days)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    return key, builder.sign(ca_key, hashes.SHA256())


def make_client_cert(
    ca_key: PrivateKey | None,
    ca_cert: x509.Certificate | None,
    common_name: str,
    days: int = 365,
) -> tuple[PrivateKey, x509.Certificate]:
    """A child's certificate; self-signed when no CA is given (IoT Hub's thumbprint devices)."""
    key = new_key()
    subject = _name(common_name)
    issuer = ca_cert.subject if ca_cert is not None else subject
    builder = _end_entity(subject, key, issuer, days).add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
    )
    if ca_cert is not None:
        builder = builder.add_extension(_authority_key_id(ca_cert), critical=False)
    signer = ca_key if ca_key is not None else key
    return key, builder.sign(signer, hashes.SHA256())


def write_pem(
    path: str | os.PathLike[str],
    key: PrivateKey | None = None,
    cert: x509.Certificate | None = None,
) -> None:
    """Write a key and/or certificate; a file holding a key is created 0600 before any byte."""
    data = b""
    if key is not None:
        data += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    mode = 0o600 if key is not None else 0o644
    target = Path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # O_CREAT's mode does not apply to a file that existed
        f.write(data)


def thumbprint(cert_der: bytes, algo: str = "sha256") -> str:
    """Lowercase hex digest of the DER certificate, as the IoT Hub registry stores it."""
    if algo not in ("sha256", "sha1"):
        raise ValueError(f"thumbprint algorithm must be sha256 or sha1, not {algo!r}")
    return hashlib.new(algo, cert_der).hexdigest()


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# -- building blocks --------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _base(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _end_entity(
    subject: x509.Name, key: PrivateKey, issuer: x509.Name, days: int
) -> x509.CertificateBuilder:
    return (
        _base(subject, issuer, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,  # ECDHE handshakes on older stacks want it
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
