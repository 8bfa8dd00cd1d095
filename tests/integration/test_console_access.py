"""Issue 19: who may reach the console. Loopback by default; beyond it only TLS with a password
(or client certificates), else a one-line refusal before anything listens; and a form from
another origin, or without this process's token, changes nothing. Plain HTTP clients, no
browser: these are the server's rules."""

from __future__ import annotations

import base64
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from gateway.operator import Operator
from tests.support.console import Console
from tests.support.gatewayd import HUB
from tests.support.pki import server_tls


def start(cloud, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli.gatewayctl", "console",
                           "--cloud", cloud.url, *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args, words", [
    (("--listen", "0.0.0.0:0"), "refusing to listen on 0.0.0.0, beyond loopback, without a "
                                "password (--console-password-file) or client certificates"),
    (("--listen", "0.0.0.0:0", "--console-password-file", "PASSWORD"),
     "refusing to listen on 0.0.0.0 without TLS"),
    (("--listen", "8080"), "--listen: expected HOST:PORT, got '8080'"),
])
def test_an_unprotected_address_beyond_loopback_is_refused_in_one_line(cloud, tmp_path, args,
                                                                        words):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    done = start(cloud, *(str(secret) if a == "PASSWORD" else a for a in args))
    assert done.returncode == 64
    assert done.stderr.startswith("gatewayctl: ") and words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, "one line, nothing listened"


def test_beyond_loopback_the_password_over_tls_is_required(cloud, tmp_path):
    ca, cert, key = server_tls(tmp_path)
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    console = Console(cloud.url, "--console-password-file", str(secret), "--tls-cert", str(cert),
                      "--tls-key", str(key), listen="0.0.0.0:0")
    try:
        port = console.url.rsplit(":", 1)[1]
        url = f"https://127.0.0.1:{port}/fleet"
        ctx = ssl.create_default_context(cafile=str(ca))

        def status(password: str | None) -> int:
            request = urllib.request.Request(url)
            if password is not None:
                token = base64.b64encode(f"operator:{password}".encode()).decode()
                request.add_header("Authorization", f"Basic {token}")
            try:
                return urllib.request.urlopen(request, context=ctx, timeout=30).status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status(None) == 401 and status("guess") == 401
        assert status("s3cret") == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain HTTP there
            urllib.request.urlopen(f"http://127.0.0.1:{port}/fleet", timeout=30)
    finally:
        console.stop()


def test_a_form_from_another_origin_or_without_the_token_changes_nothing(cloud):
    console = Console(cloud.url, "--hub-hostname", HUB)
    try:
        page = urllib.request.urlopen(console.url + "/gateways/edge-1/add", timeout=30).read()
        token = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()

        def post(body: str, origin: str | None) -> tuple[int, str]:
            request = urllib.request.Request(console.url + "/gateways/edge-1/add",
                                             data=body.encode())
            if origin:
                request.add_header("Origin", origin)
            try:
                answer = urllib.request.urlopen(request, timeout=30)
                return answer.status, answer.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        code, text = post(f"csrf={token}&devices=dev-1", "http://evil.example")
        assert code == 403 and "a form from http://evil.example, not from this console" in text
        code, text = post(f"csrf={token}&devices=dev-1", "null")
        assert code == 403
        code, text = post("devices=dev-1", None)
        assert code == 403 and "the form is not from this console" in text
        with Operator.connect(cloud.url) as op:
            assert op.parent_of("dev-1") is None, "nothing written"
        code, text = post(f"csrf={token}&devices=dev-1", console.url)  # its own origin
        assert code == 200 and "SharedAccessKey=" in text
    finally:
        journal = console.stop()
    assert "console: children add edge-1 refused: a form from http://evil.example" in journal
    assert "console: children add edge-1 dev-1" in journal


def test_beyond_loopback_a_client_certificate_from_the_named_ca_is_required(cloud, tmp_path):
    from gateway.child import certs

    ca, cert, key = server_tls(tmp_path)
    client_ca_key, client_ca = certs.make_ca("operators' CA")
    certs.write_pem(tmp_path / "operators.pem", cert=client_ca)
    for name, signer in (("operator", (client_ca_key, client_ca)), ("stranger", (None, None))):
        k, c = certs.make_client_cert(*signer, name)
        certs.write_pem(tmp_path / f"{name}.pem", cert=c)
        certs.write_pem(tmp_path / f"{name}.key", key=k)
    console = Console(cloud.url, "--client-ca", str(tmp_path / "operators.pem"), "--tls-cert",
                      str(cert), "--tls-key", str(key), listen="0.0.0.0:0")
    try:
        url = f"https://127.0.0.1:{console.url.rsplit(':', 1)[1]}/fleet"

        def fetch(who: str | None) -> int:
            ctx = ssl.create_default_context(cafile=str(ca))
            if who:
                ctx.load_cert_chain(str(tmp_path / f"{who}.pem"), str(tmp_path / f"{who}.key"))
            return urllib.request.urlopen(url, context=ctx, timeout=30).status

        assert fetch("operator") == 200
        for who in (None, "stranger"):
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                fetch(who)
    finally:
        console.stop()


def test_the_console_outlives_a_broker_restart(cloud):
    from tests.support.wait import wait_until

    console = Console(cloud.url)

    def fleet() -> tuple[int, str]:
        try:
            answer = urllib.request.urlopen(console.url + "/fleet", timeout=60)
            return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        assert fleet()[0] == 200
        cloud.stop()
        code, text = fleet()
        assert code == 503 and "The cloud broker does not answer" in text
        cloud.start()
        wait_until(fleet, lambda answer: answer[0] == 200, timeout=60,
                   what="the console's pages once the broker is back")
    finally:
        console.stop()
