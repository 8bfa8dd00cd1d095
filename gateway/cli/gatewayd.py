"""`gatewayd --config FILE`: the daemon's entry point.

A configuration error ends the process before the store is touched, with one line on stderr
(which systemd puts in the journal) and exit code 78, so that systemd does not restart-loop on it.

The event loop is uvloop's when it is installed (the .deb ships it): libuv's loop and transports
in C take about a third off the CPU per relayed message, most of which is loop turns, callbacks
and socket writes (docs/performance.md). `GATEWAYD_EVENT_LOOP=asyncio` runs the standard loop,
which is also the fallback wherever uvloop cannot be imported.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable

from gateway import log
from gateway.cli import exits
from gateway.config import load_config
from gateway.errors import ConfigError, GatewayError
from gateway.log import Event, event

DEFAULT_CONFIG = "/etc/gatewayd/gatewayd.toml"
EVENT_LOOP_ENV = "GATEWAYD_EVENT_LOOP"  # "asyncio": the standard loop; "uvloop" (default)


def main(argv: list[str] | None = None) -> int:
    config_path = config_argument(sys.argv[1:] if argv is None else argv)
    return exits.run("gatewayd", lambda: _serve(config_path), _journal)


def config_argument(argv: list[str]) -> str:
    """The configuration file named on the command line.

    The forms the unit and an operator use (nothing, or `--config FILE`) are read here, and
    argparse is imported only for anything else (--help, a typo): it and gettext stay in the
    daemon's memory for its whole life, 0.6 MiB of its idle RSS (issue 18).
    """
    if not argv:
        return DEFAULT_CONFIG
    if len(argv) == 2 and argv[0] == "--config" and not argv[1].startswith("-"):
        return argv[1]
    import argparse

    parser = argparse.ArgumentParser(prog="gatewayd", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="TOML configuration file")
    return parser.parse_args(argv).config


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
    from gateway.daemon import allocator
    from gateway.daemon.gateway import run  # heavy imports only once the config is known good

    allocator.tune()  # before RocksDB's threads start: they take their arenas on first use

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(run(config))
    except KeyboardInterrupt:
        return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop unless the environment asks for the standard one or uvloop is missing
    (None: asyncio's default)."""
    choice = os.environ.get(EVENT_LOOP_ENV, "uvloop").strip().lower()
    if choice == "asyncio":
        return None
    if choice != "uvloop":
        raise ConfigError(f"{EVENT_LOOP_ENV}={choice!r}: expected uvloop or asyncio")
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _journal(exc: GatewayError, line: str) -> None:
    """The daemon's last line goes to the journal, numbered by what went wrong."""
    kind = Event.CONFIG_ERROR if isinstance(exc, ConfigError) else Event.STORE_ERROR
    event(kind, line, level=logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
