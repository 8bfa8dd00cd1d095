"""One error hierarchy for the whole daemon, and the exit codes it ends with.

Every error gatewayd raises on purpose derives from GatewayError and carries the message to print
(one line, saying what is wrong and what to do) and the exit code the command line should end
with, so that the CLI never has to guess how to report a failure. The branches say whose fault it
is: PeerError is the other side of a connection breaking a rule (log it, close that connection),
InternalError is a bug on this side; the rest are the operator's or the environment's.

The exit codes are those of sysexits.h, defined here once. EX_CONFIG is the one the unit file
names in `RestartPreventExitStatus=78`, so that systemd does not restart-loop on a bad file;
EX_TEMPFAIL is the one systemd should restart on (a full disk, after the ballast is released).
"""

EX_FAILURE = 1  # a refusal: the command was understood and the answer is no
EX_USAGE = 64  # a command-line argument is wrong
EX_DATAERR = 65  # a document or a stored record is refused
EX_UNAVAILABLE = 69  # a service the command needs does not answer (gatewayd, the cloud broker)
EX_SOFTWARE = 70  # a bug on this side
EX_IOERR = 74  # the store cannot be opened or written
EX_TEMPFAIL = 75  # try again: systemd restarts the daemon
EX_PROTOCOL = 76  # the peer broke the protocol
EX_CONFIG = 78  # the configuration is wrong; RestartPreventExitStatus=78 stops the restart loop


class GatewayError(Exception):
    """Base of every error gatewayd raises on purpose."""

    exit_code = EX_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(GatewayError):
    """The configuration file is missing, unreadable or wrong; names the file and the key."""

    exit_code = EX_CONFIG


class UsageError(GatewayError):
    """A command-line argument is wrong; the message names the flag."""

    exit_code = EX_USAGE


class UnavailableError(GatewayError):
    """Something the command needs does not answer: gatewayd's socket, the cloud broker, DNS."""

    exit_code = EX_UNAVAILABLE


class StoreError(GatewayError):
    """The durable store cannot be opened or written."""

    exit_code = EX_IOERR


class DataError(GatewayError):
    """A document (from the cloud, a child or the operator) or a stored record is refused."""

    exit_code = EX_DATAERR


class RegistryError(DataError):
    """A registry document from the cloud is malformed; the last good registry stays in force."""


class PeerError(GatewayError):
    """The other side of a connection broke a rule: its fault, not ours; close and log why."""

    exit_code = EX_PROTOCOL


class InternalError(GatewayError):
    """This side was asked to do something the rules forbid: a bug here, not the peer's."""

    exit_code = EX_SOFTWARE

