"""Who may reach the console, and which requests may change the fleet.

The console can rewrite every gateway's registry, so by default it listens on loopback only, for
the operator's own browser. Any other address needs TLS and a way to tell the operator from the
network: a password (HTTP basic, over that TLS) or a client certificate signed by a CA the
operator names; without them the console refuses to start, in one line. A form from another
site must not be able to change the fleet either (a page elsewhere can make the operator's
browser POST here): every form carries this process's token and every change checks it, and the
Origin header, when the browser sends one, must be the console's own.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.operator import OperatorUsageError


@dataclass(frozen=True)
class Listen:
    """Where the console listens, and what a caller must show."""

    host: str
    port: int
    password: str = ""  # HTTP basic; any user name
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""  # a client certificate signed by this CA is required

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise OperatorUsageError(f"--listen: expected HOST:PORT, got {text!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(listen: Listen) -> None:
    """Refuse, before anything listens, an address beyond loopback that nothing protects."""
    if bool(listen.tls_cert) != bool(listen.tls_key):
        raise OperatorUsageError("console: --tls-cert and --tls-key go together")
    if listen.client_ca and not listen.tls_cert:
        raise OperatorUsageError("console: --client-ca needs --tls-cert and --tls-key")
    if is_loopback(listen.host):
        return
    if not listen.password and not listen.client_ca:
        raise OperatorUsageError(
            f"console: refusing to listen on {listen.host}, beyond loopback, without a password "
            f"(--console-password-file) or client certificates (--client-ca)")
    if not listen.tls_cert:
        raise OperatorUsageError(
            f"console: refusing to listen on {listen.host} without TLS (--tls-cert, --tls-key): "
            f"the password would cross the network in clear")


def read_password(path: str) -> str:
    """The first line of the file: a password given on the command line would show in ps."""
    try:
        text = Path(path).read_text().splitlines()
    except OSError as exc:
        raise OperatorUsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not text or not text[0].strip():
        raise OperatorUsageError(f"{path}: empty; write the console's password on its first line")
    return text[0].strip()


def tls_context(listen: Listen) -> ssl.SSLContext | None:
    if not listen.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(listen.tls_cert, listen.tls_key)
        if listen.client_ca:
            ctx.load_verify_locations(listen.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise OperatorUsageError(f"console: TLS files: {exc}") from None
    return ctx


def password_ok(listen: Listen, authorization: str) -> bool:
    """Whether the request's HTTP basic credentials carry the password (any user name)."""
    if not listen.password:
        return True
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        _user, _, given = base64.b64decode(value, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given.encode(), listen.password.encode())


class FormGuard:
    """This process's token, put in every form and checked on every change."""

    def __init__(self) -> None:
        self.token = secrets.token_urlsafe(32)

    def allows(self, form: dict[str, str], headers: dict[str, str]) -> str:
        """"" when the change may go ahead, else why not."""
        origin = headers.get("origin", "")
        host = headers.get("host", "")
        if origin and origin.split("://", 1)[-1] != host:  # "null" (a sandboxed frame) too
            return f"a form from {origin}, not from this console: nothing changed"
        if not hmac.compare_digest(form.get("csrf", "").encode(), self.token.encode()):
            return ("the form is not from this console (or the console was restarted "
                    "since the page was loaded); reload the page and try again")
        return ""
