"""`gatewayd --config FILE`: the daemon's entry point.

A configuration error ends the process before the store is touched, with one line on stderr
(which systemd puts in the journal) and exit code 78, so that systemd does not restart-loop on it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from gateway import log
from gateway.cli import exits
from gateway.config import load_config
from gateway.errors import ConfigError, GatewayError
from gateway.log import Event, event

DEFAULT_CONFIG = "/etc/gatewayd/gatewayd.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatewayd", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="TOML configuration file")
    args = parser.parse_args(argv)
    return exits.run("gatewayd", lambda: _serve(args.config), _journal)


def _serve(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except GatewayError:
        log.setup("info")  # before the configuration is known, the line still needs a logger
        raise
    log.setup(config.log.level, config.gateway.id)
    # the store holds the module secret: nothing gatewayd writes is for other users to read,
    # whatever umask it was started with (the unit sets 0027 too)
    os.umask(os.umask(0) | 0o027)
    from gateway.daemon.gateway import run  # heavy imports only once the config is known good

    try:
        return asyncio.run(run(config))
    except KeyboardInterrupt:
        return 0


def _journal(exc: GatewayError, line: str) -> None:
    """The daemon's last line goes to the journal, numbered by what went wrong."""
    kind = Event.CONFIG_ERROR if isinstance(exc, ConfigError) else Event.STORE_ERROR
    event(kind, line, level=logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
