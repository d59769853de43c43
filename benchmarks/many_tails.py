"""5,000 live tails on one instance, through the LB (issue 16, acceptance).

    .venv/bin/python benchmarks/many_tails.py [--tails 5000] [--processes 2] [--logs 3]

Starts a private Redis-compatible server, an `aygolog lb` and one `aygolog api` registered with
it (default settings). `--processes` client processes (raw asyncio protocols on uvloop, so the
clients cost little) open `--tails` SSE streams `GET /api/logs/stream` through the LB, 200
connects at a time, each waiting for the `: connected` comment. Then it prints the four
figures of the acceptance:

1. `/health` of the instance (directly, as the LB's probe asks it) and of the LB, 100 times
   10 ms apart while the tails are open: p50, p99, max.
2. A log POSTed through the LB, `--logs` times one after the other: the time from the POST's
   answer (and from its sending) to the moment the last of the tails received it. Each client
   process notes `time.monotonic()` (one clock for every process on Linux) when a stream's
   bytes first contain the log's marker; the parent takes the latest over all processes.
3. Everything closed by the clients: how long until the LB's and the instance worker's open
   file counts (/proc/PID/fd) are back within 10 of what they were before the tails opened.

Bounded: connects take a few seconds, each fan-out waits at most 30 s, the close at most 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, cast

import httpx

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from aygolog.cli import raise_open_files_limit
from aygolog.embedded import EmbeddedRedis
from support import ServiceProcess, children, wait_until

TOKEN = "bench-token"


# -- a client process ----------------------------------------------------------------------


class _Tail(asyncio.Protocol):
    """One raw SSE client: sends the request, notes when `: connected` and each marker came."""

    def __init__(self, request: bytes, opened: asyncio.Future[None]) -> None:
        self.request = request
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.marker = b""
        self.seen_at: float | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.buffer += data
            if b": connected" in self.buffer:
                if not self.buffer.startswith(b"HTTP/1.1 200"):
                    self.opened.set_exception(ConnectionError(self.buffer[:200].decode()))
                else:
                    self.opened.set_result(None)
                self.buffer = b""
            return
        if self.seen_at is None and self.marker:
            window = self.buffer + data
            if self.marker in window:
                self.seen_at = time.monotonic()
                self.buffer = b""
            else:
                self.buffer = window[-len(self.marker) :]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before connected: {exc}"))


async def _client(port: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    request = b"GET /api/logs/stream HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n\r\n"
    gate = asyncio.Semaphore(200)
    tails: list[_Tail] = []

    async def open_one() -> None:
        async with gate:
            opened: asyncio.Future[None] = loop.create_future()
            tail = _Tail(request, opened)
            tails.append(tail)
            await loop.create_connection(lambda: tail, "127.0.0.1", port)
            await asyncio.wait_for(opened, 60)

    started = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(count)))
    _say(f"opened {time.monotonic() - started:.3f}")
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "watch":  # the next marker: reset
            for tail in tails:
                tail.marker, tail.seen_at, tail.buffer = line[1].encode(), None, b""
            _say("watching")
        elif line[0] == "report":  # wait (bounded) until every stream saw the marker
            deadline = time.monotonic() + float(line[1])
            while any(t.seen_at is None for t in tails) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling thousands of protocols
                await asyncio.sleep(0.01)
            seen = [t.seen_at for t in tails if t.seen_at is not None]
            first = min(seen) if seen else 0.0
            last = max(seen) if seen else 0.0
            _say(f"seen {len(seen)} {first:.6f} {last:.6f}")
        elif line[0] == "close":
            for tail in tails:
                if tail.transport is not None:
                    tail.transport.close()
            await asyncio.sleep(0)
            _say(f"closed {time.monotonic():.6f} lost {sum(t.lost for t in tails)}")
            return


def _say(line: str) -> None:
    print(line, flush=True)


# -- the parent ------------------------------------------------------------------------------


class ClientProcess:
    def __init__(self, port: int, count: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--client", str(port), "--tails", str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def tell(self, line: str) -> None:
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()

    def hear(self) -> list[str]:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"a client process ended (exit {self.process.wait()})")
        return line.split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its live children so far (seconds): with `aygolog lb
    --workers N` the LB is a supervisor and its N workers."""
    total = 0
    for one in (pid, *children(pid)):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def open_files(pid: int) -> int:
    """Open files of `pid` and its live children (the LB's workers)."""
    total = 0
    for one in (pid, *children(pid)):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{one}/fd"))
    return total


def timed_gets(url: str, times: int = 100) -> list[float]:
    took = []
    with httpx.Client(timeout=10) as client:
        for _ in range(times):
            sent = time.perf_counter()
            client.get(url).raise_for_status()
            took.append(time.perf_counter() - sent)
            time.sleep(0.01)
    return took


def summary(name: str, took: list[float]) -> str:
    p99 = statistics.quantiles(took, n=100, method="inclusive")[98]
    return (
        f"{name} p50 {statistics.median(took) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms,"
        f" max {max(took) * 1000:.1f} ms"
    )


def run(tails: int, processes: int, logs: int) -> None:
    if raise_open_files_limit() < tails + 500:
        raise SystemExit(f"the open-files limit is below {tails + 500}")
    with EmbeddedRedis() as server:
        common = {
            "AYGOLOG_REDIS_URL": server.url,
            "AYGOLOG_REDIS_PREFIX": "tailbench",
            "AYGOLOG_REGISTRATION_TOKEN": TOKEN,
        }
        lb = ServiceProcess("lb", env=common).start()
        api = ServiceProcess(
            "api",
            env={
                **common,
                "AYGOLOG_LB_URL": lb.url,
                "AYGOLOG_HEARTBEAT_INTERVAL": "1",
                "AYGOLOG_INSTANCE_NAME": "api-tails",
            },
        )
        clients: list[ClientProcess] = []
        try:
            api.start(timeout=60)

            def registered() -> bool:
                services = httpx.get(lb.url + "/api/registration/services", timeout=2).json()
                return any(s.get("status") == "healthy" for s in services)

            assert wait_until(registered, 30), "the instance did not register"
            assert lb.process is not None
            assert api.process is not None
            lb_pid = lb.process.pid
            (worker,) = children(api.process.pid)
            before = {"lb": open_files(lb_pid), "instance": open_files(worker)}
            load = os.getloadavg()[0]
            print(
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load average"
                f" {load:.2f}; {tails} tails through the LB onto one instance, {processes}"
                f" client processes; pids lb {lb_pid} (workers {children(lb_pid) or 'none'}),"
                f" instance worker {worker}",
                flush=True,
            )
            started = time.monotonic()
            share = [tails // processes + (i < tails % processes) for i in range(processes)]
            clients = [ClientProcess(lb.port, n) for n in share]
            for client in clients:
                client.hear()  # "opened"
            print(f"opened {tails} streams in {time.monotonic() - started:.1f} s", flush=True)
            ready = httpx.get(api.url + "/health/ready", timeout=10).json()
            print(f"instance subscribers: {ready['tail']['subscribers']}")
            print(summary("/health of the instance:", timed_gets(api.url + "/health")))
            print(summary("/health of the LB:      ", timed_gets(lb.url + "/health")))
            during_fan_out: list[float] = []
            probing = threading.Event()

            def probe() -> None:  # /health of the instance while the logs go out
                with httpx.Client(timeout=10) as client:
                    while probing.wait(30) and not stopping.is_set():
                        sent = time.perf_counter()
                        client.get(api.url + "/health").raise_for_status()
                        during_fan_out.append(time.perf_counter() - sent)
                        time.sleep(0.01)

            stopping = threading.Event()
            prober = threading.Thread(target=probe, daemon=True)
            prober.start()
            with httpx.Client(base_url=lb.url, timeout=30) as http:
                for n in range(logs):
                    marker = f"fan-out-{os.getpid()}-{n}-{time.time_ns()}"
                    for client in clients:
                        client.tell(f"watch {marker}")
                    for client in clients:
                        client.hear()
                    cpu = {"lb": cpu_seconds(lb_pid), "instance": cpu_seconds(worker)}
                    probing.set()
                    sent = time.monotonic()
                    http.post("/api/log", json={"message": marker}).raise_for_status()
                    answered = time.monotonic()
                    for client in clients:
                        client.tell("report 30")
                    seen = [client.hear() for client in clients]
                    probing.clear()
                    count = sum(int(s[1]) for s in seen)
                    first = min(float(s[2]) for s in seen)
                    last = max(float(s[3]) for s in seen)
                    used = {
                        "lb": cpu_seconds(lb_pid) - cpu["lb"],
                        "instance": cpu_seconds(worker) - cpu["instance"],
                    }
                    print(
                        f"log {n + 1}: reached {count} of {tails}; the last"
                        f" {last - answered:.3f} s after the POST's answer ({last - sent:.3f} s"
                        f" after it was sent; the first {first - answered:+.3f} s); CPU the"
                        f" instance {used['instance']:.2f} s, the LB {used['lb']:.2f} s",
                        flush=True,
                    )
                    time.sleep(0.5)
            stopping.set()
            probing.set()
            prober.join(10)
            if len(during_fan_out) >= 2:
                print(summary("/health of the instance during the fan-outs:", during_fan_out))
            during = {"lb": open_files(lb_pid), "instance": open_files(worker)}
            for client in clients:
                client.tell("close")
            closed = max(float(client.hear()[1]) for client in clients)

            def freed() -> bool:
                return (
                    open_files(lb_pid) <= before["lb"] + 10
                    and open_files(worker) <= before["instance"] + 10
                )

            wait_until(freed, 30, step=0.02)
            took = time.monotonic() - closed
            print(
                f"closed: open files lb {before['lb']} -> {during['lb']} ->"
                f" {open_files(lb_pid)}, instance {before['instance']} -> {during['instance']}"
                f" -> {open_files(worker)}; back within {took:.2f} s of the last close"
                f" (load average now {os.getloadavg()[0]:.2f})"
            )
        finally:
            for client in clients:
                if client.process.poll() is None:
                    client.process.kill()
                client.process.wait()
            api.close()
            lb.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tails", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--logs", type=int, default=3)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)  # a client process: port
    args = parser.parse_args()
    if args.client:
        raise_open_files_limit()
        import uvloop

        uvloop.run(_client(args.client, args.tails))
    else:
        run(args.tails, args.processes, args.logs)


if __name__ == "__main__":
    main()
