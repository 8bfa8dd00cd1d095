"""certs.py: chains that OpenSSL accepts, key file modes, thumbprints."""

from __future__ import annotations

import hashlib
import ssl
import stat

from cryptography import x509

from gateway.child import certs


def test_server_cert_chains_to_the_ca_and_loads_into_ssl(tmp_path):
    ca_key, ca = certs.make_ca("test CA")
    key, cert = certs.make_server_cert(ca_key, ca, ["gw.local", "localhost"], ["127.0.0.1"])
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.local", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    certs.write_pem(tmp_path / "ca.pem", cert=ca)
    certs.write_pem(tmp_path / "server.pem", cert=cert)
    certs.write_pem(tmp_path / "server.key", key=key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    client = ssl.create_default_context(cafile=tmp_path / "ca.pem")
    assert client.get_ca_certs()[0]["subject"] == ((("commonName", "test CA"),),)


def test_key_files_are_private_even_when_they_existed(tmp_path):
    key, cert = certs.make_client_cert(None, None, "s1", days=30)
    target = tmp_path / "s1.pem"
    target.write_text("old")
    target.chmod(0o644)
    certs.write_pem(target, key=key, cert=cert)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    text = target.read_text()
    assert "PRIVATE KEY" in text and "CERTIFICATE" in text
    certs.write_pem(tmp_path / "cert-only.pem", cert=cert)
    assert stat.S_IMODE((tmp_path / "cert-only.pem").stat().st_mode) == 0o644


def test_client_certs_self_signed_or_issued(tmp_path):
    _key, own = certs.make_client_cert(None, None, "s1", days=30)
    own.verify_directly_issued_by(own)
    ca_key, ca = certs.make_ca("children CA")
    _key, issued = certs.make_client_cert(ca_key, ca, "s2", days=30)
    issued.verify_directly_issued_by(ca)
    assert issued.subject.rfc4514_string() == "CN=s2"


def test_thumbprints_are_lowercase_hex_digests():
    _key, cert = certs.make_client_cert(None, None, "s1", days=30)
    der = certs.der(cert)
    assert certs.thumbprint(der) == hashlib.sha256(der).hexdigest()
    assert certs.thumbprint(der, "sha1") == hashlib.sha1(der).hexdigest()
    assert len(certs.thumbprint(der, "sha1")) == 40
