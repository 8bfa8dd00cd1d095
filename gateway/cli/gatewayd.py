"""`gatewayd --config FILE`: the daemon's entry point.

A configuration error ends the process before the store is touched, with one line on stderr
(which systemd puts in the journal) and exit code 78, so that systemd does not restart-loop on it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway import log
from gateway.config import load_config
from gateway.errors import GatewayError
from gateway.log import Event, event

DEFAULT_CONFIG = "/etc/gatewayd/gatewayd.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatewayd", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="TOML configuration file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except GatewayError as exc:
        log.setup("info")
        event(Event.CONFIG_ERROR, f"gatewayd: {exc.message}", level=40)
        return exc.exit_code
    log.setup(config.log.level, config.gateway.id)
    from gateway.daemon.gateway import run  # heavy imports only once the config is known good

    try:
        return asyncio.run(run(config))
    except GatewayError as exc:
        event(Event.STORE_ERROR, f"gatewayd: {exc.message}", level=40)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
