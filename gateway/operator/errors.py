"""What an operator command can refuse, with the exit status gatewayctl gives it."""

from __future__ import annotations

from gateway.errors import EX_UNAVAILABLE, EX_USAGE, GatewayError


class OperatorError(GatewayError):
    """A refused operator command; the message is the one line to print."""


class OperatorUsageError(OperatorError):
    """A flag of the command is wrong; nothing was sent."""

    exit_code = EX_USAGE


class CloudUnavailable(OperatorError):
    """The cloud broker cannot be reached or does not answer; nothing was changed by us."""

    exit_code = EX_UNAVAILABLE
