"""First-install provisioning: certificates made once, never overwritten; DNS pinning."""

from __future__ import annotations

import ssl

from gateway.cli.provision import pin_dns, provision


def test_certificates_are_made_once_and_verify(tmp_path):
    message = provision(tmp_path, ["gw.local"], ["10.0.0.2"], None)
    assert "children must trust" in message and str(tmp_path / "ca.pem") in message
    assert oct((tmp_path / "ca.key").stat().st_mode)[-3:] == "600"
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ctx.load_cert_chain(str(tmp_path / "gateway.pem"), str(tmp_path / "gateway.key"))
    before = (tmp_path / "gateway.pem").read_bytes()
    assert "keeping" in provision(tmp_path, ["other"], [], None)
    assert (tmp_path / "gateway.pem").read_bytes() == before


def test_dns_pinning_from_the_config(tmp_path):
    config = tmp_path / "gatewayd.toml"
    config.write_text('[gateway]\nid = "g"\nhub_hostname = "h.example"\n[listen]\nport = 0\n'
                      f'[storage]\npath = "{tmp_path}/store"\n'
                      '[cloud]\nurl = "mqtts://broker.example:8883"\n'
                      'dns_servers = ["192.0.2.53", "2001:db8::53"]\n')
    dropin = tmp_path / "resolved.conf.d" / "gatewayd.conf"
    assert "192.0.2.53" in pin_dns(config, dropin)
    assert "DNS=192.0.2.53 2001:db8::53\nFallbackDNS=\n" in dropin.read_text()
    config.write_text(config.read_text().replace('dns_servers = ["192.0.2.53", "2001:db8::53"]\n',
                                                 ""))
    assert pin_dns(config, tmp_path / "none.conf") == ""
