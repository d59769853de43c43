"""nginx and HAProxy in front of the same upstreams, configured alike, and a TLS certificate.

Both round-robin over the upstreams with keep-alive to them, log nothing, and run `workers`
ways (nginx `worker_processes N`; HAProxy one process with `nbthread N`). With a certificate
they serve HTTPS (TLS 1.2 and 1.3) on the listening port. Each is stopped by its PID when the
`with` block ends, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""

    cert: Path
    key: Path
    combined: Path
    """Certificate then key in one file (HAProxy's `crt`)."""


def self_signed(directory: Path) -> Certificate:
    """Make a self-signed RSA 2048 certificate for 127.0.0.1/localhost with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    combined = directory / "combined.pem"
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    return Certificate(cert, key, combined)


def wait_listening(
    port: int, timeout: float = 10.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something accepts TCP connections on (HOST, port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; by PID."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Limits:
    """The connection limits a front end is given (printed with the results)."""

    client_connections: int = 4096
    """nginx `worker_connections` (per worker; each proxied request holds two), HAProxy
    `maxconn` (global and frontend)."""
    idle_upstream: int = 64
    """nginx `keepalive` (idle upstream connections cached per worker). HAProxy keeps idle
    server connections without a cap (`http-reuse always`)."""

    def describe(self) -> str:
        return (
            f"nginx worker_connections {self.client_connections}, keepalive {self.idle_upstream}"
            f" per worker; haproxy maxconn {self.client_connections}, http-reuse always"
        )


@contextlib.contextmanager
def nginx(
    directory: Path,
    port: int,
    upstreams: list[int],
    *,
    workers: int = 1,
    limits: Limits = Limits(),
    certificate: Certificate | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """nginx (master + `workers` workers), round robin, HTTP/1.1 keep-alive to the upstreams."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    tmp = directory / "nginx"
    tmp.mkdir(exist_ok=True)
    servers = " ".join(f"server {HOST}:{p};" for p in upstreams)
    listen = f"{HOST}:{port}"
    tls = ""
    if certificate is not None:
        listen += " ssl"
        tls = (
            f"ssl_certificate {certificate.cert}; ssl_certificate_key {certificate.key};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;"
        )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""worker_processes {workers}; daemon off; pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile {limits.client_connections * 4};
events {{ worker_connections {limits.client_connections}; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    upstream backends {{ {servers} keepalive {limits.idle_upstream}; }}
    server {{
        listen {listen};
        {tls}
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )
    process = subprocess.Popen(
        [binary, "-p", str(tmp), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        try:
            wait_listening(port, process=process)
        except RuntimeError as exc:
            log = tmp / "error.log"
            raise RuntimeError(f"nginx: {exc}\n{log.read_text() if log.exists() else ''}") from exc
        yield process
    finally:
        stop(process)


@contextlib.contextmanager
def haproxy(
    directory: Path,
    port: int,
    upstreams: list[int],
    *,
    workers: int = 1,
    limits: Limits = Limits(),
    certificate: Certificate | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """HAProxy (one process, `nbthread workers`), round robin, keep-alive and `http-reuse
    always` to the upstreams, no logging."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    servers = "\n".join(
        f"    server s{i} {HOST}:{p} pool-purge-delay 5s" for i, p in enumerate(upstreams)
    )
    bind = f"{HOST}:{port}"
    if certificate is not None:
        bind += f" ssl crt {certificate.combined} ssl-min-ver TLSv1.2"
    conf = directory / "haproxy.cfg"
    conf.write_text(
        f"""global
    nbthread {workers}
    maxconn {limits.client_connections}

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 75s
    timeout server 30s
    timeout http-keep-alive 75s

frontend bench
    bind {bind}
    maxconn {limits.client_connections}
    default_backend upstreams

backend upstreams
    balance roundrobin
    http-reuse always
{servers}
"""
    )
    log = directory / "haproxy.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(conf)], stdout=output, stderr=subprocess.STDOUT
        )
    try:
        try:
            wait_listening(port, process=process)
        except RuntimeError as exc:
            raise RuntimeError(f"haproxy: {exc}\n{log.read_text(errors='replace')}") from exc
        yield process
    finally:
        stop(process)
