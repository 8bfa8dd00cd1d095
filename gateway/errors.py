"""One error hierarchy for the whole daemon.

Every error the operator can cause carries the message to print (one line, saying what is wrong
and what to do) and the exit code the command line should end with, so that the CLI never has to
guess how to report a failure.
"""


class GatewayError(Exception):
    """Base of every error gatewayd raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(GatewayError):
    """The configuration file is missing, unreadable or wrong; names the file and the key."""

    exit_code = 78  # EX_CONFIG: systemd will not restart-loop on it with RestartPreventExitStatus


class StoreError(GatewayError):
    """The durable store cannot be opened or written."""

    exit_code = 74  # EX_IOERR


class SyncOnLoopError(StoreError):
    """Our bug: a synced write (an fsync) was asked for on the event loop's thread, where it
    would stall every child for the length of a flush; it must go through the writer."""


class RegistryError(GatewayError):
    """A registry document from the cloud is malformed; the last good registry stays in force."""
