"""How every command line ends on a GatewayError: one line saying why, and the error's exit code.

gatewayd, gatewayctl and the cloud commands under gatewayctl all end through `run`, so that an
error class's exit code (gateway/errors.py) is the process's exit status wherever it is raised,
and nothing else in a command has to choose a number.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from gateway.errors import GatewayError


def _to_stderr(_exc: GatewayError, line: str) -> None:
    print(line, file=sys.stderr)


def run(
    prog: str,
    command: Callable[[], int],
    say: Callable[[GatewayError, str], None] = _to_stderr,
) -> int:
    """`command()`'s status; a GatewayError instead becomes `prog: message` and its exit code.

    `say` lets the daemon send the line to the journal with the event it belongs to; the
    operator's commands print it on stderr.
    """
    try:
        return command()
    except GatewayError as exc:
        say(exc, f"{prog}: {exc.message}")
        return exc.exit_code
