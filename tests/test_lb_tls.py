"""TLS at the load balancer: a real `aygolog lb --workers 2 --tls-cert --tls-key` with a
certificate made here (trustme), clients verifying it, and the start-up errors."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from pydantic import ValidationError

from aygolog.embedded import EmbeddedRedis
from aygolog.lb.app import proxy_config_from
from aygolog.lb.tls import TLSConfigError, server_context
from aygolog.settings import LoadBalancerSettings
from stub_instance import Stub
from support import ServiceProcess

TOKEN = "tls-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.timeout(180)


class Pem:
    """A CA, and a certificate for 127.0.0.1 and localhost that it signed, as files."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = directory / "cert.pem"
        self.key = directory / "key.pem"
        self.cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        server.private_key_pem.write_to_path(str(self.key))

    def client(self, **kwargs: object) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        for name, value in kwargs.items():
            setattr(context, name, value)
        return context


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Pem:
    return Pem(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_lb(pem: Pem) -> Iterator[ServiceProcess]:
    with EmbeddedRedis() as redis:
        env = {
            "AYGOLOG_REDIS_URL": redis.url,
            "AYGOLOG_REGISTRATION_TOKEN": TOKEN,
            "AYGOLOG_HEARTBEAT_TTL": "120",
        }
        lb = ServiceProcess(
            "lb",
            env=env,
            args=("--workers", "2", "--tls-cert", str(pem.cert), "--tls-key", str(pem.key)),
        ).spawn()
        try:
            deadline = time.monotonic() + 90
            url = f"https://127.0.0.1:{lb.port}/health"
            while True:
                assert lb.process is not None
                assert lb.process.poll() is None, lb.output()
                try:
                    if httpx.get(url, verify=pem.client(), timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, lb.output()
                time.sleep(0.1)
            yield lb
        finally:
            lb.close()


def test_clients_verify_the_certificate_and_speak_http11_over_tls12_or_later(
    tls_lb: ServiceProcess, pem: Pem
) -> None:
    https = f"https://127.0.0.1:{tls_lb.port}"
    with httpx.Client(verify=pem.client()) as client:
        answer = client.get(https + "/health")
        assert answer.status_code == 200
        assert answer.http_version == "HTTP/1.1"
    # ALPN picks http/1.1; the protocol is TLS 1.2 or 1.3.
    context = pem.client()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", tls_lb.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # A client that does not trust the CA is refused by its own verification.
    with pytest.raises(httpx.ConnectError):
        httpx.get(https + "/health", timeout=5)


def test_tls_below_12_and_plain_http_are_not_served(tls_lb: ServiceProcess, pem: Pem) -> None:
    old = pem.client()
    old.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer TLS 1.0/1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is, by design here
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        pytest.raises((ssl.SSLError, OSError)),
        socket.create_connection(("127.0.0.1", tls_lb.port), timeout=5) as raw,
        old.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_lb.port}/health", timeout=5)


def test_proxied_requests_and_registration_over_tls_say_https_upstream(
    tls_lb: ServiceProcess, pem: Pem
) -> None:
    https = f"https://127.0.0.1:{tls_lb.port}"
    stub = Stub().start()
    try:
        with httpx.Client(verify=pem.client(), headers=AUTH) as client:
            registered = client.post(
                https + "/api/registration", json={"name": "tls-a", "url": stub.url}
            )
            assert registered.status_code == 201, registered.text
            answers = [
                httpx.get(https + "/api/log", verify=pem.client(), timeout=10)  # new connections
                for _ in range(6)
            ]
            assert [a.status_code for a in answers] == [200] * 6
            assert stub.forwarded_proto == ["https"] * 6
            assert client.delete(https + "/api/registration/tls-a").status_code == 204
    finally:
        stub.close()


# -- start-up errors: clear, and before anything listens ------------------------------------


def test_cert_and_key_come_together() -> None:
    with pytest.raises(ValidationError, match=r"AYGOLOG_TLS_CERT .* set but AYGOLOG_TLS_KEY"):
        LoadBalancerSettings(insecure_open_registration=True, tls_cert=Path("c.pem"))
    with pytest.raises(ValidationError, match=r"AYGOLOG_TLS_KEY .* set but AYGOLOG_TLS_CERT"):
        LoadBalancerSettings(insecure_open_registration=True, tls_key=Path("k.pem"))
    both = LoadBalancerSettings(
        insecure_open_registration=True, tls_cert=Path("c.pem"), tls_key=Path("k.pem")
    )
    assert proxy_config_from(both).scheme == "https"
    assert proxy_config_from(LoadBalancerSettings(insecure_open_registration=True)).scheme == (
        "http"
    )


def test_unreadable_bad_or_mismatched_files_are_named(pem: Pem, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(TLSConfigError, match=r"AYGOLOG_TLS_CERT.*nope\.pem.*cannot be read"):
        server_context(missing, pem.key)
    with pytest.raises(TLSConfigError, match=r"AYGOLOG_TLS_KEY.*nope\.pem.*cannot be read"):
        server_context(pem.cert, missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match="not a PEM certificate"):
        server_context(garbage, pem.key)
    other_key = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(TLSConfigError, match="does not belong to the certificate"):
        server_context(pem.cert, other_key)
    context = server_context(pem.cert, pem.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_command_says_what_is_missing_and_exits_1(pem: Pem, tmp_path: Path) -> None:
    env = {**os.environ, "AYGOLOG_REGISTRATION_TOKEN": TOKEN}
    command = [sys.executable, "-m", "aygolog", "lb", "--port", "0"]
    only_cert = subprocess.run(
        [*command, "--tls-cert", str(pem.cert)], env=env, capture_output=True, timeout=60
    )
    assert only_cert.returncode == 1
    assert b"AYGOLOG_TLS_KEY (--tls-key) is not" in only_cert.stderr
    unreadable = subprocess.run(
        [*command, "--tls-cert", str(tmp_path / "gone.pem"), "--tls-key", str(pem.key)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert unreadable.returncode == 1
    assert b"gone.pem" in unreadable.stderr
    assert b"cannot be read" in unreadable.stderr


def test_the_container_healthcheck_speaks_tls_to_a_tls_load_balancer(
    tls_lb: ServiceProcess, pem: Pem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aygolog import cli

    monkeypatch.setattr(cli, "_container_command", lambda: ["aygolog", "lb"])
    monkeypatch.setenv("AYGOLOG_PORT", str(tls_lb.port))
    monkeypatch.setenv("AYGOLOG_TLS_CERT", str(pem.cert))
    assert cli.main(["healthcheck"]) == cli.EXIT_OK
    monkeypatch.delenv("AYGOLOG_TLS_CERT")
    assert cli.main(["healthcheck"]) == cli.EXIT_UNAVAILABLE  # plain HTTP to a TLS port
