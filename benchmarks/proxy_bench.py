"""Throughput, latency and CPU per request of the LB's data plane (`aygolog.lb.proxy`), by wrk.

    .venv/bin/python benchmarks/proxy_bench.py [--nginx] [--haproxy] [--runs 3] [--workers N]
        [--tls] [--asyncio] [--seconds 10] [--connections 32] [--threads 2]

Three minimal upstreams (one uvloop process answering every request with a fixed 201 JSON, as a
Log API instance does for POST /api/log, without the work) are loaded with `wrk -tT -cC` POSTs
(keep-alive): (a) directly, one upstream (what wrk can drive with no proxy: a proxy row far below
it is not limited by wrk); (b) through `ProxyServer` on uvloop, round robin over the three;
with --asyncio also on the default asyncio loop; with --python PATH also run by another
interpreter (its version and build are printed); with --nginx also nginx and with --haproxy
also HAProxy (Debian's binaries), both round robin with keep-alive to the upstreams and no
logging (see _frontends.py).

--workers N runs N aygolog proxy processes, each a full `ProxyServer` started with
`reuse_port=True` on the same port (as `aygolog lb --workers N`: one data plane per worker),
nginx with `worker_processes N` and HAProxy with `nbthread N`.
--tls serves HTTPS from every proxy with one self-signed certificate made at start (TLS 1.2+;
`ProxyServer.start(ssl=...)`, nginx `listen ... ssl`, HAProxy `bind ... ssl crt`); wrk keeps its
connections alive, so the handshakes are amortised over the run. The direct row stays plain HTTP.

wrk runs -t2 by default (--threads): its "wrk cores" column (wrk's own CPU time over the run's
length, from its rusage) shows whether it was near saturation; the direct row shows what it
drives with no proxy in between.

CPU per request: the user + system CPU time of the proxy's processes (nginx master + workers,
the HAProxy process with all its threads, every aygolog proxy process), read from
/proc/PID/stat before and after the wrk run, divided by the requests wrk completed; "user" is
the share of it spent in user mode (the rest is the kernel's: mostly the socket reads and writes,
and switching tasks), "preempt/req" the involuntary context switches of those processes per
request (from /proc/PID/status: how often another task took the CPU from the proxy; on a busy
machine with few cores, each one costs kernel time and cache). Each proxy
gets a 1 s warm-up first, not counted. --runs K repeats the whole set K times, the proxies in a
rotated order each run, and ends with a summary (median, min-max). Every process started is
stopped by its PID at the end, also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httptools

sys.path.insert(0, str(Path(__file__).parent))
import _frontends
import _wrk
from _common import cpu_seconds, loadavg, process_tree, raise_fd_limit, run_header
from _frontends import Certificate, Limits, haproxy, nginx, self_signed, stop

wait_listening = _frontends.wait_listening  # hostile_header.py imports it from here

HOST = "127.0.0.1"
BODY = b'{"id":"1700000000000-0","name":"benchmark log line","instance":"bench"}'
RESPONSE = (
    b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    % (len(BODY), BODY)
)
REQUEST_BODY = b'{"name": "benchmark log line", "level": "info", "service": "bench"}'
LIMITS = Limits(client_connections=4096, idle_upstream=64)


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


async def _until_stopped() -> None:
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop_event.set)
    loop.add_signal_handler(signal.SIGINT, stop_event.set)
    await stop_event.wait()


async def _run_upstreams(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_FixedAnswer, HOST, port) for port in ports]
    await _until_stopped()
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


async def _run_proxy(spec: dict[str, Any]) -> None:
    from aygolog.lb.proxy import ProxyConfig, ProxyServer

    targets = [_Target(f"api-{i + 1}", HOST, p) for i, p in enumerate(spec["upstreams"])]
    context = None
    if spec["cert"]:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(spec["cert"], spec["key"])
    proxy = ProxyServer(
        picker=_RoundRobin(targets),
        route=lambda method, path: path.startswith("/api/"),
        config=ProxyConfig(scheme="https" if context else "http"),
    )
    await proxy.start(HOST, spec["port"], reuse_port=spec["reuse_port"], ssl=context)
    if spec["ready"]:
        Path(spec["ready"]).touch()  # noqa: ASYNC240 - once, at start-up
    await _until_stopped()
    await proxy.aclose(grace=1)


# -- the driver -----------------------------------------------------------------------------------


@dataclass
class Row:
    """One proxy measured in one run."""

    label: str
    wrk: _wrk.WrkResult
    cpu_us_per_request: float | None
    proxy_cores: float | None
    tls: str = ""
    user_share: float | None = None
    """The share of the proxy's CPU time spent in user mode."""
    preemptions: float | None = None
    """Involuntary context switches of the proxy's processes per request."""


@dataclass
class Running:
    """A started proxy: its port, the PIDs whose CPU time counts, and how to stop it."""

    port: int
    roots: list[int]
    scheme: str = "http"
    notes: list[str] = field(default_factory=list)


_PROBE = """
import platform, time
def f(a, b):
    return a + b
def loop(n):
    t = time.process_time()
    for i in range(n):
        f(i, 1)
        b"%s%016x" % (b"ab", i)
    return (time.process_time() - t) / n * 1e9
print(platform.python_version(), min(loop(200_000) for _ in range(5)))
"""


def interpreter(python: str) -> str:
    """The version of a Python and a probe of its speed on plain Python code (CPU ns per loop
    of a call and a bytes format; a build with PGO and LTO is much faster than one without)."""
    out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, check=True)
    version, ns = out.stdout.split()
    return f"Python {version}, probe {float(ns):.0f} ns CPU per loop"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _child(*args: str, python: str = sys.executable) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([python, __file__, *args])
    try:
        yield process
    finally:
        stop(process)


@contextlib.contextmanager
def aygolog_proxies(
    tmp: Path,
    upstreams: list[int],
    *,
    loop: str,
    workers: int,
    certificate: Certificate | None,
    python: str = sys.executable,
) -> Iterator[Running]:
    """`workers` proxy processes on one port (SO_REUSEPORT when more than one), run by the
    interpreter `python`."""
    port = free_port()
    ready = tmp / f"ready-{port}"
    with contextlib.ExitStack() as stack:
        processes = []
        for index in range(workers):
            spec = {
                "loop": loop,
                "port": port,
                "upstreams": upstreams,
                "reuse_port": workers > 1,
                "cert": str(certificate.cert) if certificate else "",
                "key": str(certificate.key) if certificate else "",
                "ready": f"{ready}.{index}",
            }
            child = _child("_proxy", json.dumps(spec), python=python)
            processes.append(stack.enter_context(child))
        deadline = time.monotonic() + 20
        while not all(Path(f"{ready}.{i}").exists() for i in range(workers)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError("the aygolog proxy processes did not start")
            time.sleep(0.05)
        yield Running(port, [p.pid for p in processes], "https" if certificate else "http")


@contextlib.contextmanager
def frontend(
    kind: Callable[..., contextlib.AbstractContextManager[subprocess.Popen[bytes]]],
    tmp: Path,
    upstreams: list[int],
    *,
    workers: int,
    certificate: Certificate | None,
) -> Iterator[Running]:
    port = free_port()
    with kind(
        tmp, port, upstreams, workers=workers, limits=LIMITS, certificate=certificate
    ) as process:
        yield Running(port, [process.pid], "https" if certificate else "http")


def tls_version(port: int) -> str:
    """The TLS version and cipher a default client negotiates with (HOST, port)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        cipher = tls.cipher()
        return f"{tls.version()} {cipher[0] if cipher else '?'}"


def measure(
    label: str, running: Running, args: argparse.Namespace, *, count_cpu: bool = True
) -> Row:
    url = f"{running.scheme}://{HOST}:{running.port}/api/log"
    common = {"body": REQUEST_BODY, "connections": args.connections, "threads": args.threads}
    _wrk.run(url, seconds=1, **common)  # warm-up: pools filled, code paths hot
    pids = [pid for root in running.roots for pid in process_tree(root)]
    before, user_before, switches_before = cpu_seconds(pids), *_user_and_preemptions(pids)
    result = _wrk.run(url, seconds=args.seconds, **common)
    used = cpu_seconds(pids) - before
    user, switches = _user_and_preemptions(pids)
    tls = tls_version(running.port) if running.scheme == "https" else ""
    if not count_cpu:
        return Row(label, result, None, None, tls)
    requests = result.requests or 1
    return Row(
        label,
        result,
        used / requests * 1e6 if result.requests else float("nan"),
        used / result.seconds,
        tls,
        (user - user_before) / used if used else None,
        (switches - switches_before) / requests,
    )


def _user_and_preemptions(pids: list[int]) -> tuple[float, int]:
    """User-mode CPU seconds and involuntary context switches so far of these processes (all
    their threads; a process that is gone counts 0)."""
    user, switches = 0, 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            user += int(stat.rsplit(")", 1)[1].split()[11])  # utime, in clock ticks
            status = Path(f"/proc/{pid}/status").read_text()
            switches += int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
    return user / os.sysconf("SC_CLK_TCK"), switches


def print_table(rows: list[Row]) -> None:
    nginx_rate = next((r.wrk.requests_per_second for r in rows if r.label.startswith("nginx")), 0)
    print(
        f"{'':40} {'req/s':>9} {'vs nginx':>8} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7} "
        f"{'sock err c/r/w/t':>16} {'CPU µs/req':>10} {'user':>5} {'preempt/req':>11} "
        f"{'proxy cores':>11} {'wrk cores':>9}"
    )
    for r in rows:
        ratio = f"{r.wrk.requests_per_second / nginx_rate:.2f}" if nginx_rate else "-"
        cpu = f"{r.cpu_us_per_request:.1f}" if r.cpu_us_per_request is not None else "-"
        cores = f"{r.proxy_cores:.2f}" if r.proxy_cores is not None else "-"
        user = f"{r.user_share:.0%}" if r.user_share is not None else "-"
        preempted = f"{r.preemptions:.2f}" if r.preemptions is not None else "-"
        print(
            f"{r.label:40} {r.wrk.requests_per_second:9,.0f} {ratio:>8} {r.wrk.p50_ms:7.2f} "
            f"{r.wrk.p99_ms:7.2f} {r.wrk.non_2xx:7d} {r.wrk.socket_errors_text():>16} "
            f"{cpu:>10} {user:>5} {preempted:>11} {cores:>11} "
            f"{r.wrk.cpu_seconds / r.wrk.seconds:9.2f}"
        )
    for r in rows:
        if r.tls:
            print(f"  {r.label}: {r.tls}")


def print_summary(runs: list[list[Row]]) -> None:
    labels = list(dict.fromkeys(r.label for rows in runs for r in rows))

    def spread(values: list[float], fmt: str) -> str:
        if not values:
            return "-"
        median = format(statistics.median(values), fmt)
        return f"{median} ({format(min(values), fmt)}-{format(max(values), fmt)})"

    print(f"\nsummary of {len(runs)} runs: median (min-max)")
    print(f"{'':40} {'req/s':>24} {'vs nginx':>18} {'CPU µs/req':>18} {'non-2xx':>8}")
    for label in labels:
        rates, ratios, cpus, failures = [], [], [], 0
        for rows in runs:
            nginx_rate = next(
                (r.wrk.requests_per_second for r in rows if r.label.startswith("nginx")), 0
            )
            for r in rows:
                if r.label != label:
                    continue
                rates.append(r.wrk.requests_per_second)
                if nginx_rate:
                    ratios.append(r.wrk.requests_per_second / nginx_rate)
                if r.cpu_us_per_request is not None:
                    cpus.append(r.cpu_us_per_request)
                failures += r.wrk.non_2xx + r.wrk.socket_error_count
        print(
            f"{label:40} {spread(rates, ',.0f'):>24} {spread(ratios, '.2f'):>18} "
            f"{spread(cpus, '.1f'):>18} {failures:8d}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole set K times")
    parser.add_argument("--workers", type=int, default=1, help="processes/threads per proxy")
    parser.add_argument("--tls", action="store_true", help="every proxy serves HTTPS")
    parser.add_argument("--asyncio", action="store_true", help="also the proxy without uvloop")
    parser.add_argument("--nginx", action="store_true", help="also nginx in front of them")
    parser.add_argument("--haproxy", action="store_true", help="also HAProxy in front of them")
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="also the proxy (uvloop) run by this interpreter, e.g. a virtualenv's bin/python "
        "made with another build of CPython (it needs the project installed)",
    )
    args = parser.parse_args()
    import shutil

    for tool in ["wrk"] + ["nginx"] * args.nginx + ["haproxy"] * args.haproxy:
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install {tool})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fds = raise_fd_limit()

    print(run_header("benchmarks/proxy_bench.py " + " ".join(sys.argv[1:])))
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s --latency, keep-alive, "
        f"POST /api/log; 3 fixed-answer upstreams in one uvloop process; workers {args.workers}"
        f"{'; TLS (self-signed RSA 2048, handshakes amortised by keep-alive)' if args.tls else ''}"
        f"; open-file limit {fds}"
    )
    print(f"limits: {LIMITS.describe()}; aygolog: ProxyConfig() defaults")
    for python in [sys.executable] + [args.python] * bool(args.python):
        print(f"interpreter {python}: {interpreter(python)}")
    upstreams = [free_port() for _ in range(3)]
    runs: list[list[Row]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        certificate = self_signed(tmp) if args.tls else None
        with _child("_upstreams", *map(str, upstreams)):
            for port in upstreams:
                wait_listening(port)
            w = f" x{args.workers}" if args.workers > 1 else ""
            tls = ", TLS" if args.tls else ""
            proxies: list[tuple[str, Callable[[], contextlib.AbstractContextManager[Running]]]]
            proxies = [
                (f"aygolog proxy (uvloop){w}{tls}", lambda: aygolog_proxies(
                    tmp, upstreams, loop="uvloop", workers=args.workers, certificate=certificate))
            ]  # fmt: skip
            if args.python:
                label = f"aygolog proxy (uvloop){w}{tls}, --python"
                proxies.append((label, lambda: aygolog_proxies(
                    tmp, upstreams, loop="uvloop", workers=args.workers, certificate=certificate,
                    python=args.python)))  # fmt: skip
            if args.asyncio:
                proxies.append((f"aygolog proxy (asyncio){w}{tls}", lambda: aygolog_proxies(
                    tmp, upstreams, loop="asyncio", workers=args.workers, certificate=certificate)
                ))  # fmt: skip
            options = {"workers": args.workers, "certificate": certificate}
            if args.nginx:
                proxies.append(
                    (
                        f"nginx{w}{tls}",
                        functools.partial(frontend, nginx, tmp, upstreams, **options),
                    )
                )
            if args.haproxy:
                proxies.append((
                    f"haproxy nbthread {args.workers}{tls}",
                    functools.partial(frontend, haproxy, tmp, upstreams, **options),
                ))  # fmt: skip
            for run in range(args.runs):
                print(f"\n## run {run + 1} of {args.runs}, load average before: {loadavg()}")
                direct = Running(upstreams[0], [], "http")
                rows = [measure("direct, one upstream (plain HTTP)", direct, args, count_cpu=False)]
                shift = run % len(proxies)
                for label, start in proxies[shift:] + proxies[:shift]:
                    with start() as running:
                        rows.append(measure(label, running, args))
                rows[1:] = sorted(rows[1:], key=lambda r: [p[0] for p in proxies].index(r.label))
                print_table(rows)
                print(f"load average after run {run + 1}: {loadavg()}", flush=True)
                runs.append(rows)
    if args.runs > 1:
        print_summary(runs)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_upstreams":
        import uvloop

        uvloop.run(_run_upstreams([int(p) for p in sys.argv[2:]]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_proxy":
        if sys.argv[2].startswith("{"):
            child_spec = json.loads(sys.argv[2])
        else:  # `_proxy LOOP PORT UPSTREAM...`, as hostile_header.py starts it
            loop_name, proxy_port, *rest = sys.argv[2:]
            child_spec = {"loop": loop_name, "port": int(proxy_port),
                          "upstreams": [int(p) for p in rest], "reuse_port": False,
                          "cert": "", "key": "", "ready": ""}  # fmt: skip
        coroutine = _run_proxy(child_spec)
        if child_spec["loop"] == "uvloop":
            import uvloop

            uvloop.run(coroutine)
        else:
            asyncio.run(coroutine)
    else:
        main()
