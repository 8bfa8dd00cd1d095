"""First-install provisioning: a local CA and the gateway's TLS certificate, if none exist.

Run by the .deb's postinst (and the image's first boot) as `python -m gateway.cli.provision`. It
never overwrites: a certificate the operator put in place is theirs. The CA's key stays
root-only; the gateway's key is readable by the service's group. It prints where the CA is,
because every child must be given that file to trust the gateway.
"""

from __future__ import annotations

import argparse
import grp
import os
import socket
import sys
from pathlib import Path

from gateway.child import certs


def provision(directory: Path, hostnames: list[str], ips: list[str], group: str | None) -> str:
    """Create ca.pem/ca.key/gateway.pem/gateway.key under `directory` unless gateway.pem exists."""
    cert_file, key_file = directory / "gateway.pem", directory / "gateway.key"
    ca_file = directory / "ca.pem"
    if cert_file.exists():
        return f"gatewayd: keeping the existing certificate {cert_file}"
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = certs.make_ca(f"gatewayd local CA ({hostnames[0]})")
    key, cert = certs.make_server_cert(ca_key, ca_cert, hostnames, ips)
    certs.write_pem(directory / "ca.key", key=ca_key)
    certs.write_pem(ca_file, cert=ca_cert)
    certs.write_pem(key_file, key=key)
    certs.write_pem(cert_file, cert=cert)
    if group is not None:
        gid = grp.getgrnam(group).gr_gid
        os.chown(key_file, 0, gid)
        os.chmod(key_file, 0o640)
    return (f"gatewayd: made a local CA and a TLS certificate for {', '.join(hostnames + ips)}; "
            f"children must trust {ca_file} (server_verification_cert)")


def pin_dns(config_file: Path, dropin: Path) -> str:
    """Pin the system resolver (systemd-resolved) to cloud.dns_servers, so the rest of the
    machine (NTP, apt) uses the same resolvers as the uplink; '' when none are configured."""
    from gateway.config import load_config

    servers = load_config(config_file).cloud.dns_servers
    if not servers:
        return ""
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("# written by gatewayd from cloud.dns_servers in " + str(config_file)
                      + "\n[Resolve]\nDNS=" + " ".join(servers) + "\nFallbackDNS=\n")
    return f"gatewayd: pinned the system resolver to {', '.join(servers)} ({dropin})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.cli.provision", description=__doc__
                                     .splitlines()[0])
    parser.add_argument("--dir", default="/etc/gatewayd", type=Path)
    parser.add_argument("--hostname", action="append", help="default: this host's names")
    parser.add_argument("--ip", action="append", default=[])
    parser.add_argument("--group", help="group that may read the gateway's key")
    parser.add_argument("--pin-dns", metavar="CONFIG", type=Path,
                        help="write a systemd-resolved drop-in from CONFIG's cloud.dns_servers")
    parser.add_argument("--dropin", type=Path,
                        default=Path("/etc/systemd/resolved.conf.d/gatewayd.conf"))
    args = parser.parse_args(argv)
    if args.pin_dns:
        message = pin_dns(args.pin_dns, args.dropin)
        if message:
            print(message)
        return 0
    hostnames = args.hostname or sorted({socket.gethostname(), socket.getfqdn(), "localhost"})
    print(provision(args.dir, hostnames, args.ip, args.group))
    return 0


if __name__ == "__main__":
    sys.exit(main())
