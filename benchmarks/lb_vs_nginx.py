"""The whole system: the aygolog LB against nginx and HAProxy, in front of the same 3 instances.

    .venv/bin/python benchmarks/lb_vs_nginx.py [--connections 32,256,512] [--runs 1]
        [--seconds 10] [--workers 1] [--tls] [--threads 2] [--timeout 2] [--redis-url URL]

Needs `wrk`, `nginx` and `haproxy` (Debian packages). Starts a private Redis-compatible server,
the real `aygolog lb`, 3 `aygolog api` instances registered with it, nginx and HAProxy (round
robin, keep-alive to the instances, no logging; see _frontends.py for their limits), then POSTs
one small log per request with `wrk -tT -cN --latency` (keep-alive) through each proxy, and to
one instance directly, once per value of --connections; --runs K repeats the whole set. The
proxies go in a rotated order each time; before each row the LB must see its 3 instances
healthy again (after the row before it, the instances may have been overloaded).

Printed per proxy: req/s, the ratio to nginx, p50/p99, the non-2xx share (wrk's "Non-2xx or
3xx responses", i.e. status >= 400, over responses), wrk's socket errors (connect/read/write/
timeout; a response slower than --timeout counts as a timeout and is left out of p99), the
failed share ((non-2xx + socket errors) / (responses + connect/read/write errors), see _wrk.py)
and the proxy's CPU per request (/proc, as proxy_bench.py). When a proxy has failures, a short
second run (--diagnose-seconds) with a Lua `response` hook counts the status codes, who answered
(X-Served-By) and the first body of each, and the instances' /metrics counters that moved
(4xx/5xx, errors, retries, ejections) are printed, with the LB's for an LB row. At
the end, ERROR/WARNING lines and tracebacks in the services' logs are counted.

--workers N gives `aygolog lb --workers N` (when the LB has the option, `--workers 1` is given
by default: the LB's own default is the CPU count), nginx `worker_processes N` and HAProxy
`nbthread N`. --tls serves HTTPS from the LB (`--tls-cert/--tls-key`), nginx and HAProxy with one
self-signed certificate (the instances register over https, trusting it via SSL_CERT_FILE); wrk
keeps its connections alive, so handshakes are amortised; the direct row stays plain HTTP.

The bars (issue 16): the LB's non-2xx share <= nginx's in every run at every -c (printed also
with the socket errors counted: the failed share), and the LB's throughput >= 0.9x nginx at
-c32.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import _wrk
from _common import cpu_seconds, loadavg, process_tree, raise_fd_limit, redis_target, run_header
from _frontends import Certificate, Limits, haproxy, nginx, self_signed
from aygolog.embedded import free_port
from support import ServiceProcess

TOKEN = "bench-token"
LIMITS = Limits(client_connections=4096, idle_upstream=192)
"""nginx keeps up to 192 idle upstream connections per worker: 64 per instance, as the LB's
`max_idle_per_upstream`."""
LB = "aygolog LB"
NGINX = "nginx"
HAPROXY = "haproxy"
DIRECT = "one instance directly"
BODY = msgspec.json.encode(
    {"message": "GET /api/items/42 handled in 12 ms", "level": "info", "service": "web",
     "attributes": {"status": 200}}
)  # fmt: skip


# -- Prometheus counters that tell why requests failed --------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+([-+\d.eE]+|NaN|[+-]Inf)\s*$")
_TELLING = re.compile(r"error|refused|eject|retr|unavailable|no_healthy|panic|overflow|rejected")


def counters(url: str) -> dict[str, float]:
    """The `_total` samples of a /metrics page (name{labels} -> value); {} if it does not
    answer."""
    try:
        text = httpx.get(url + "/metrics", timeout=5, verify=False).text
    except httpx.HTTPError:
        return {}
    found = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1).endswith("_total"):
            found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


def telling_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The counters that moved and say something about failures: a 4xx/5xx/0 status label, or
    a name about errors, refusals, ejections, retries."""
    moved = {}
    for key, value in after.items():
        delta = value - before.get(key, 0.0)
        if delta <= 0:
            continue
        failed_status = re.search(r'status="(0|[45]\d\d)"', key)
        if failed_status or _TELLING.search(key.split("{")[0]):
            moved[key] = delta
    return moved


# -- one measurement ------------------------------------------------------------------------------


@dataclass
class Row:
    proxy: str
    connections: int
    wrk: _wrk.WrkResult
    cpu_us_per_request: float
    diagnosis: _wrk.WrkResult | None = None
    metric_deltas: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""


@dataclass
class System:
    lb: ServiceProcess
    lb_base: str
    """The LB's base URL (https:// with --tls)."""
    apis: list[ServiceProcess]
    urls: dict[str, str]
    pids: dict[str, list[int]]


def wait_lb_healthy(base: str, expected: int, timeout: float = 20.0) -> int:
    """Wait until the LB at `base` routes to `expected` instances; how many it has."""
    deadline = time.monotonic() + timeout
    healthy = 0
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(base + "/health", timeout=2, verify=False)
            healthy = int(answer.json()["healthy_instances"])
        except (httpx.HTTPError, ValueError, KeyError):
            healthy = 0
        if healthy >= expected:
            return healthy
        time.sleep(0.2)
    return healthy


def measure(system: System, proxy: str, connections: int, args: argparse.Namespace) -> Row:
    note = ""
    healthy = wait_lb_healthy(system.lb_base, len(system.apis))
    if healthy < len(system.apis):
        note = f"the LB saw {healthy} healthy instances at the start"
    time.sleep(args.pause)
    url = system.urls[proxy] + "/api/log"
    pids = [pid for root in system.pids[proxy] for pid in process_tree(root)]
    watched = {"lb": system.lb_base} | {f"api-{i}": a.url for i, a in enumerate(system.apis)}
    before_metrics = {name: counters(base) for name, base in watched.items()}
    before = cpu_seconds(pids)
    options = {"body": BODY, "connections": connections, "threads": args.threads,
               "timeout": args.timeout}  # fmt: skip
    result = _wrk.run(url, seconds=args.seconds, **options)
    used = cpu_seconds(pids) - before
    row = Row(proxy, connections, result, used / max(result.requests, 1) * 1e6, note=note)
    if result.non_2xx or result.socket_error_count:
        # The LB's counters only say something about its own row; the instances' about any.
        row.metric_deltas = {
            name: deltas
            for name, base in watched.items()
            if (proxy == LB or name != "lb")
            and (deltas := telling_deltas(before_metrics[name], counters(base)))
        }
        if args.diagnose_seconds > 0:
            wait_lb_healthy(system.lb_base, len(system.apis))
            row.diagnosis = _wrk.run(url, seconds=args.diagnose_seconds, statuses=True, **options)
    return row


# -- printing -------------------------------------------------------------------------------------


def _pct(share: float) -> str:
    return f"{share * 100:.2f}%"


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    nginx_rate = next((r.wrk.requests_per_second for r in rows if r.proxy == NGINX), 0.0)
    c = rows[0].connections
    print(f"\nPOST /api/log, wrk -t{args.threads} -c{c} -d{args.seconds:g}s --timeout "
          f"{args.timeout:g}s, workers {args.workers}{', TLS' if args.tls else ''}")  # fmt: skip
    print(
        f"{'':22} {'req/s':>8} {'vs nginx':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
        f"{'sock err c/r/w/t':>17} {'failed':>8} {'CPU µs/req':>10}"
    )
    for r in rows:
        w = r.wrk
        ratio = f"{w.requests_per_second / nginx_rate:.2f}" if nginx_rate else "-"
        print(
            f"{r.proxy:22} {w.requests_per_second:8,.0f} {ratio:>8} {w.p50_ms:8.2f} "
            f"{w.p99_ms:8.2f} {_pct(w.non_2xx_share):>8} {w.socket_errors_text():>17} "
            f"{_pct(w.failed_share):>8} {r.cpu_us_per_request:10.1f}"
        )
    if any(r.proxy == DIRECT for r in rows):
        print(f"  ({DIRECT}: CPU µs/req is the instance's own, granian and its worker)")
    for r in rows:
        if r.note:
            print(f"  {r.proxy}: {r.note}")
        if r.diagnosis is not None:
            d = r.diagnosis
            statuses = ", ".join(f"{s}: {n}" for s, n in sorted(d.statuses.items()))
            print(f"  {r.proxy}, {args.diagnose_seconds:g} s diagnostic run at -c{c}: statuses "
                  f"{{{statuses}}}, non-2xx {_pct(d.non_2xx_share)}, socket errors "
                  f"{d.socket_errors_text()}")  # fmt: skip
            for key, n in sorted(d.served_by.items()):
                print(f"    status and X-Served-By: {key}: {n}")
            for status, body in sorted(d.bodies.items()):
                print(f"    first {status} body: {body[:240]}")
        for name, deltas in r.metric_deltas.items():
            moved = ", ".join(f"{k} +{v:g}" for k, v in sorted(deltas.items()))
            print(f"  {r.proxy} run, {name} /metrics moved: {moved}")
    lb = next((r for r in rows if r.proxy == LB), None)
    ng = next((r for r in rows if r.proxy == NGINX), None)
    if lb and ng:
        for what, mine, theirs in [
            ("non-2xx share", lb.wrk.non_2xx_share, ng.wrk.non_2xx_share),
            ("failed share (with socket errors)", lb.wrk.failed_share, ng.wrk.failed_share),
        ]:
            print(f"  bar: LB {what} {_pct(mine)} <= nginx's {_pct(theirs)}: "
                  f"{'yes' if mine <= theirs else 'NO'}")  # fmt: skip
        if c == 32:
            times = lb.wrk.requests_per_second / ng.wrk.requests_per_second
            print(f"  bar: LB throughput {times:.2f}x nginx >= 0.9x: "
                  f"{'yes' if times >= 0.9 else 'NO'}")  # fmt: skip


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    median = format(statistics.median(values), fmt)
    return f"{median} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def print_summary(rows: list[Row], runs: int) -> None:
    print(f"\nsummary of {runs} runs: median (min-max); non-2xx and failed shares: median (max)")
    print(f"{'':6} {'':22} {'req/s':>24} {'vs nginx':>18} {'p99 ms':>24} {'non-2xx':>18} "
          f"{'failed':>18}")  # fmt: skip
    for c in dict.fromkeys(r.connections for r in rows):
        nginx_rows = [r for r in rows if r.connections == c and r.proxy == NGINX]
        for proxy in dict.fromkeys(r.proxy for r in rows):
            mine = [r for r in rows if r.connections == c and r.proxy == proxy]
            rates = [r.wrk.requests_per_second for r in mine]
            ratios = [
                a.wrk.requests_per_second / b.wrk.requests_per_second
                for a, b in zip(mine, nginx_rows, strict=False)
                if b.wrk.requests_per_second
            ]
            non_2xx = [r.wrk.non_2xx_share for r in mine]
            failed = [r.wrk.failed_share for r in mine]
            print(
                f"{'-c' + str(c):6} {proxy:22} {_spread(rates, ',.0f'):>24} "
                f"{_spread(ratios, '.2f'):>18} {_spread([r.wrk.p99_ms for r in mine], '.1f'):>24} "
                f"{_pct(statistics.median(non_2xx)) + ' (' + _pct(max(non_2xx)) + ')':>18} "
                f"{_pct(statistics.median(failed)) + ' (' + _pct(max(failed)) + ')':>18}"
            )
        lb_rows = [r for r in rows if r.connections == c and r.proxy == LB]
        pairs = list(zip(lb_rows, nginx_rows, strict=False))
        if pairs:
            held = sum(a.wrk.non_2xx_share <= b.wrk.non_2xx_share for a, b in pairs)
            print(f"  -c{c} bar: LB non-2xx share <= nginx's in {held} of {len(pairs)} runs")
            if c == 32:
                fast = sum(
                    a.wrk.requests_per_second >= 0.9 * b.wrk.requests_per_second for a, b in pairs
                )
                print(f"  -c{c} bar: LB >= 0.9x nginx's req/s in {fast} of {len(pairs)} runs")


def log_problems(service: ServiceProcess, name: str) -> None:
    """Count ERROR/WARNING lines and tracebacks in a service's output; print a few distinct
    ones."""
    try:
        lines = service.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return
    bad = [line for line in lines if re.search(r"ERROR|WARNING|^Traceback", line)]
    if not bad:
        return
    print(f"  {name} log: {len(bad)} ERROR/WARNING/Traceback lines, e.g.:")
    for line in list(dict.fromkeys(line[:200] for line in bad))[:5]:
        print(f"    {line}")


# -- the run --------------------------------------------------------------------------------------


def lb_args(workers: int, certificate: Certificate | None) -> tuple[str, ...]:
    """`--workers N` for `aygolog lb` when it has the option (always given when it does: its
    default is the number of CPUs), and `--tls-cert/--tls-key` with a certificate."""
    done = subprocess.run([sys.executable, "-m", "aygolog", "lb", "--help"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    extra: tuple[str, ...] = ()
    if "--workers" in done.stdout:
        extra = ("--workers", str(workers))
    elif workers != 1:
        sys.exit("this `aygolog lb` has no --workers option: run with --workers 1")
    if certificate is not None:
        if "--tls-cert" not in done.stdout:
            sys.exit("this `aygolog lb` has no --tls-cert option: run without --tls")
        extra += ("--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key))
    return extra


def wait_ready(service: ServiceProcess, base: str, timeout: float = 30.0) -> None:
    """Wait until `base`/health answers 200 (over https too, unverified)."""
    assert service.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.command} exited: {service.output()}")
        try:
            if httpx.get(base + "/health", timeout=0.5, verify=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{service.command} did not become healthy: {service.output()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", default="32,256,512", help="a list: one row per value")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole set K times")
    parser.add_argument("--workers", type=int, default=1,
                        help="LB workers, nginx worker_processes, haproxy nbthread")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--timeout", type=float, default=2.0, help="wrk --timeout (its default)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds of rest before a row")
    parser.add_argument("--diagnose-seconds", type=float, default=3.0,
                        help="status-counting run after failures, seconds (0: none)")  # fmt: skip
    parser.add_argument("--no-direct", action="store_true", help="skip the one-instance row")
    parser.add_argument("--tls", action="store_true",
                        help="the LB, nginx and haproxy serve HTTPS (self-signed)")  # fmt: skip
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    for tool in ("nginx", "haproxy", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool}: apt-get install {tool}")
    levels = [int(c) for c in args.connections.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fds = raise_fd_limit()

    print(run_header("benchmarks/lb_vs_nginx.py " + " ".join(sys.argv[1:])))
    rows: list[Row] = []
    with redis_target(args.redis_url) as redis_url, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        certificate = self_signed(tmp) if args.tls else None
        extra = lb_args(args.workers, certificate)
        scheme = "https" if certificate else "http"
        print(f"limits: {LIMITS.describe()}; open-file limit {fds} (wrk, proxies, services); "
              f"`{' '.join(['aygolog lb', *extra])}`, instances with default settings"
              + ("; TLS: self-signed RSA 2048, wrk keep-alive (handshakes amortised), the "
                 "direct row plain HTTP" if certificate else ""))  # fmt: skip
        lb_port = free_port()
        lb_base = f"{scheme}://127.0.0.1:{lb_port}"
        common = {"AYGOLOG_REDIS_URL": redis_url, "AYGOLOG_REDIS_PREFIX": "lbbench",
                  "AYGOLOG_REGISTRATION_TOKEN": TOKEN}  # fmt: skip
        lb = ServiceProcess("lb", env=common, port=lb_port, args=extra)
        # With TLS the instances register over https, trusting the self-signed certificate.
        trust = {"SSL_CERT_FILE": str(certificate.cert)} if certificate else {}
        apis = [
            ServiceProcess("api", env={**common, **trust, "AYGOLOG_INSTANCE_NAME": f"api-{i}",
                                       "AYGOLOG_LB_URL": lb_base})
            for i in range(3)
        ]  # fmt: skip
        try:
            wait_ready(lb.spawn(), lb_base)
            for api in apis:
                api.start()
            if wait_lb_healthy(lb_base, 3) < 3:
                raise RuntimeError("the instances did not register with the LB")
            upstreams = [a.port for a in apis]
            nginx_port, haproxy_port = free_port(), free_port()
            with (
                nginx(tmp, nginx_port, upstreams, workers=args.workers, limits=LIMITS,
                      certificate=certificate) as nginx_process,
                haproxy(tmp, haproxy_port, upstreams, workers=args.workers, limits=LIMITS,
                        certificate=certificate) as haproxy_process,
            ):  # fmt: skip
                system = System(
                    lb, lb_base, apis,
                    urls={NGINX: f"{scheme}://127.0.0.1:{nginx_port}", LB: lb_base,
                          HAPROXY: f"{scheme}://127.0.0.1:{haproxy_port}", DIRECT: apis[0].url},
                    pids={NGINX: [nginx_process.pid], HAPROXY: [haproxy_process.pid],
                          LB: [lb.process.pid] if lb.process else [],
                          DIRECT: [apis[0].process.pid] if apis[0].process else []},
                )  # fmt: skip
                proxies = [NGINX, HAPROXY, LB]
                turn = 0
                for run in range(args.runs):
                    print(f"\n## run {run + 1} of {args.runs}, load average before: {loadavg()}")
                    for c in levels:
                        order = proxies[turn % 3 :] + proxies[: turn % 3]
                        turn += 1
                        measured = {p: measure(system, p, c, args) for p in order}
                        if not args.no_direct:
                            measured[DIRECT] = measure(system, DIRECT, c, args)
                        table = [measured[p] for p in [*proxies, DIRECT] if p in measured]
                        print_table(table, args)
                        print(f"  order: {', '.join(order)}; load average now: {loadavg()}",
                              flush=True)  # fmt: skip
                        rows.extend(table)
            print(f"\nload average after: {loadavg()}")
            log_problems(lb, "LB")
            for i, api in enumerate(apis):
                log_problems(api, f"api-{i}")
        finally:
            for api in apis:
                api.close()
            lb.close()
    if args.runs > 1:
        print_summary(rows, args.runs)


if __name__ == "__main__":
    main()
