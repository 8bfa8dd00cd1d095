"""`gatewayctl console`: the web console (gateway/console/) for the operator's browser.

    gatewayctl console --cloud URL [--listen 127.0.0.1:8080] [--hub-hostname H]
                       [--console-password-file F] [--tls-cert C --tls-key K] [--client-ca CA]
                       [--no-ledger]

Loopback by default; any other address needs TLS and a password or client certificates.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway import log
from gateway.cli import ctl_cloud
from gateway.console.access import Listen, check_listen, parse_listen, read_password
from gateway.console.pages import Pages
from gateway.console.server import serve
from gateway.operator import Operator

LEDGER_SESSION_SECS = 3600


def _console(args: argparse.Namespace) -> int:
    host, port = parse_listen(args.listen)
    listen = Listen(host, port, password=read_password(args.console_password_file)
                    if args.console_password_file else "",
                    tls_cert=args.tls_cert or "", tls_key=args.tls_key or "",
                    client_ca=args.client_ca or "")
    check_listen(listen)  # before the broker is dialled: a refused address changes nothing
    target, hub = ctl_cloud.cloud_target(args)
    log.setup("info")
    # a session the broker keeps across a lost connection, so the ledger's stream misses nothing
    with Operator(target, hub_hostname=args.hub_hostname or hub,
                  session_expiry=0 if args.no_ledger else LEDGER_SESSION_SECS) as op:
        if not args.no_ledger:
            op.watch_ledger()
        pages = Pages(op, gateway_host=args.gateway_host or "")

        def ready(bound: int) -> None:
            where = f"[{host}]" if ":" in host else host
            print(f"console: {listen.scheme}://{where}:{bound}/", flush=True)

        asyncio.run(serve(pages, listen, ready))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `gatewayctl console`."""
    console = sub.add_parser("console", help="serve the web console to a browser")
    console.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (loopback)")
    console.add_argument("--hub-hostname", help="host name in SAS tokens (gateway.hub_hostname)")
    console.add_argument("--gateway-host", help="the GatewayHostName the add form proposes")
    console.add_argument("--console-password-file", help="HTTP basic password, first line")
    console.add_argument("--tls-cert", help="serve HTTPS with this certificate")
    console.add_argument("--tls-key")
    console.add_argument("--client-ca", help="require client certificates signed by this CA")
    console.add_argument("--no-ledger", action="store_true",
                         help="do not follow every gateway's telemetry for the loss ledger")
    ctl_cloud._connection(console)
    console.set_defaults(func=_console)


if __name__ == "__main__":
    sys.exit("use gatewayctl")
