"""Throughput and latency of the LB's data plane (`aygolog.lb.proxy`), measured by wrk.

    .venv/bin/python benchmarks/proxy_bench.py [--seconds 10] [--connections 32] [--threads 2]
                                               [--asyncio] [--nginx]

Three minimal upstreams (one uvloop process answering every request with a fixed 201 JSON, as a
Log API instance does for POST /api/log, without the work) are loaded with `wrk -t2 -c32` POSTs:
(a) directly, one upstream; (b) through `ProxyServer` on uvloop, round robin over the three;
with --asyncio also (c) the proxy on the default asyncio loop; with --nginx also (d) nginx round
robin with upstream keep-alive (needs the `nginx` binary). Each server runs in its own process;
the upstreams, the proxy and wrk share the machine, as they would on one EC2 host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httptools

HOST = "127.0.0.1"
BODY = b'{"id":"1700000000000-0","name":"benchmark log line","instance":"bench"}'
RESPONSE = (
    b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    % (len(BODY), BODY)
)
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"name": "benchmark log line", "level": "info", "service": "bench"}'
wrk.headers["Content-Type"] = "application/json"
"""


# -- the child processes --------------------------------------------------------------------------


class _FixedAnswer(asyncio.Protocol):
    """A minimal HTTP/1.1 server: a fixed 201 for every request, keep-alive."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(RESPONSE)


async def _run_upstreams(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_FixedAnswer, HOST, port) for port in ports]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


@dataclass(frozen=True)
class _Target:
    name: str
    host: str
    port: int


class _RoundRobin:
    def __init__(self, targets: list[_Target]) -> None:
        self._targets = targets
        self._next = itertools.cycle(targets)

    def pick(self, exclude: set[str]) -> _Target:
        for _ in range(len(self._targets)):
            target = next(self._next)
            if target.name not in exclude:
                return target
        from aygolog.errors import NoHealthyInstance

        raise NoHealthyInstance("no healthy instance", retry_after=1.0)

    def started(self, name: str) -> None:
        pass

    def finished(self, name: str, status: int | None, seconds: float, error: str | None) -> None:
        pass


async def _run_proxy(port: int, upstream_ports: list[int]) -> None:
    from aygolog.lb.proxy import ProxyServer

    targets = [_Target(f"api-{i + 1}", HOST, p) for i, p in enumerate(upstream_ports)]
    proxy = ProxyServer(
        picker=_RoundRobin(targets), route=lambda method, path: path.startswith("/api/")
    )
    await proxy.start(HOST, port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await proxy.aclose(grace=1)


# -- the driver -----------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def child(*args: str, ports: list[int]) -> Iterator[None]:
    process = subprocess.Popen([sys.executable, __file__, *args])
    try:
        for port in ports:
            wait_listening(port)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def nginx(port: int, upstream_ports: list[int]) -> Iterator[None]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    with tempfile.TemporaryDirectory() as tmp:
        servers = "".join(f"server {HOST}:{p};" for p in upstream_ports)
        conf = Path(tmp, "nginx.conf")
        conf.write_text(
            f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    upstream logapi {{ {servers} keepalive 64; }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://logapi;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        )
        process = subprocess.Popen([binary, "-c", str(conf), "-p", tmp])
        try:
            wait_listening(port)
            yield
        finally:
            process.terminate()
            process.wait(5)


_SOCKET_ERRORS = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _millis(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk latency: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    label: str, port: int, args: argparse.Namespace, script: str, seconds: int | None = None
) -> Result:
    command = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds or args.seconds}s",
        "--latency",
        "-s",
        script,
        f"http://{HOST}:{port}/api/log",
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Requests/sec" not in out or "Latency Distribution" not in out:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _millis(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _millis(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(_SOCKET_ERRORS, out):
        errors += sum(int(n) for n in match.groups())
    return Result(label, rps, p50, p99, errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--asyncio", action="store_true", help="also the proxy without uvloop")
    parser.add_argument("--nginx", action="store_true", help="also nginx in front of them")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")

    upstream_ports = [free_port() for _ in range(3)]
    results: list[Result] = []
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        with child("_upstreams", *map(str, upstream_ports), ports=upstream_ports):
            wrk(
                "warm-up",
                upstream_ports[0],
                argparse.Namespace(**{**vars(args), "seconds": 1}),
                script.name,
            )
            results.append(wrk("direct, one upstream", upstream_ports[0], args, script.name))
            loops = ["uvloop", "asyncio"] if args.asyncio else ["uvloop"]
            for loop in loops:
                port = free_port()
                with child("_proxy", loop, str(port), *map(str, upstream_ports), ports=[port]):
                    results.append(
                        wrk(f"aygolog proxy ({loop}), 3 upstreams", port, args, script.name)
                    )
            if args.nginx:
                port = free_port()
                with nginx(port, upstream_ports):
                    results.append(wrk("nginx, 3 upstreams, keepalive", port, args, script.name))

    print(
        f"\nwrk -t{args.threads} -c{args.connections} -d{args.seconds}s, POST /api/log "
        f"(fixed 201 JSON upstreams)\n"
    )
    print(f"{'':38} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results:
        print(
            f"{r.label:38} {r.requests_per_second:10,.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} "
            f"{r.errors:7d}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_upstreams":
        import uvloop

        uvloop.run(_run_upstreams([int(p) for p in sys.argv[2:]]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_proxy":
        loop_name, proxy_port, *rest = sys.argv[2:]
        coroutine = _run_proxy(int(proxy_port), [int(p) for p in rest])
        if loop_name == "uvloop":
            import uvloop

            uvloop.run(coroutine)
        else:
            asyncio.run(coroutine)
    else:
        main()
