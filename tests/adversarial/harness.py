"""The adversarial suite's tools: good clients that measure, raw-socket attackers, and checks.

- `GoodClients`: paced httpx clients in a process of their own (`goodload.py`, so an attacker's
  work in the test's interpreter does not delay them), half writing unique messages with an
  `Idempotency-Key`, half reading. `run()`/`stop()` give one `Phase` of figures: requests,
  successes, p99.
- `RawConnection`: an asyncio socket to the LB with every operation bounded by a timeout, and a
  response reader built on httptools.
- `RssSampler`: the peak resident memory of a process while an attack runs.
- `check_good()`, `check_stored_once()`, `ejections()`: the assertions every attack test shares.
- `report()`: the one line of figures each test prints (also gathered in the terminal summary).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import httptools
import httpx

__all__ = [
    "FIGURES",
    "GoodClients",
    "Phase",
    "RawConnection",
    "RawResponse",
    "RssSampler",
    "check_good",
    "check_stored_once",
    "ejections",
    "p99_bound",
    "plain_client",
    "report",
    "services",
    "stored_messages",
]

FIGURES: Final[list[str]] = []
"""Every figure line printed in this session (shown again in the terminal summary)."""

T = TypeVar("T")

BASELINE_SECONDS: Final = 2.0
"""How long the good clients run alone before each attack."""


# -- good clients ----------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    """One good request: what it was, when, how long it took and how it ended."""

    op: str
    seconds: float
    ok: bool
    outcome: str


@dataclass
class Phase:
    """The good clients' figures over one run."""

    samples: list[Sample] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.samples)

    @property
    def failures(self) -> Counter[str]:
        return Counter(f"{s.op} {s.outcome}" for s in self.samples if not s.ok)

    @property
    def success_rate(self) -> float:
        if not self.samples:
            return 0.0
        return sum(s.ok for s in self.samples) / len(self.samples)

    def percentile(self, q: float) -> float:
        """The `q` quantile (0-1) of the latencies, failed requests included, in seconds."""
        values = sorted(s.seconds for s in self.samples)
        if not values:
            return math.inf
        return values[max(0, math.ceil(q * len(values)) - 1)]

    @property
    def p99(self) -> float:
        return self.percentile(0.99)


class GoodClients:
    """Paced good clients against `url`, in a process of their own (`goodload.py`).

    A separate process, so that what an attacker does in the test's interpreter (parsing
    thousands of answers, holding the GIL) is not measured as good-client latency; one process
    for the whole test (a Python start costs seconds on a busy machine), its requests sorted into
    phases by when they started. Each of `workers` clients sends `rate` requests a second at
    most (one at a time, on one keep-alive connection), so the offered load is the same with and
    without an attack. Even workers write (`POST /api/log`, a unique message, `service=tag`, an
    `Idempotency-Key`), odd workers read (`GET /api/logs?service=tag&limit=10`). No retries: a
    failure counts.

    Attributes:
        attempted: every message sent.
        acked: every message answered 2xx with that message stored.
    """

    def __init__(
        self,
        url: str,
        *,
        tag: str,
        workers: int = 4,
        rate: float = 15.0,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.tag = tag
        self.workers = workers
        self.rate = rate
        self.timeout = timeout
        self.attempted: set[str] = set()
        self.acked: set[str] = set()
        self._samples: list[tuple[int, float, Sample]] = []
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Start the clients; returns once they are ready to send."""
        assert self._process is None, "already running"
        args = [self.url, self.tag, 1, self.workers, self.rate, self.timeout]
        self._process = process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("goodload.py")), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        ready = process.stdout.readline()  # bounded: the child gives up after MAX_SECONDS
        if ready.strip() != "ready":
            self.close()
            raise AssertionError(f"the good clients did not start: {ready!r}")
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            worker, op, started, seconds, ok, outcome, message = json.loads(line)
            if message is not None:
                self.attempted.add(message)
                if ok:
                    self.acked.add(message)
            self._samples.append((worker, started, Sample(op, seconds, ok, outcome)))

    @property
    def running(self) -> bool:
        return self._process is not None

    async def phase(self, since: float, until: float) -> Phase:
        """The requests started in [since, until) (time.monotonic()), once all have ended."""
        deadline = time.monotonic() + self.timeout + 5
        while time.monotonic() < deadline and self._process is not None:
            # Each worker sends one request at a time: once every worker has one started at or
            # after `until`, all those started before it have ended.
            later = {worker for worker, started, _ in list(self._samples) if started >= until}
            if len(later) == self.workers:
                break
            await asyncio.sleep(0.02)
        return Phase([s for _, started, s in list(self._samples) if since <= started < until])

    async def run(self, seconds: float = BASELINE_SECONDS, *, warmup: float = 0.3) -> Phase:
        """A phase of `seconds` with nothing else going on (a baseline); the clients are started
        first if need be, and then `warmup` seconds are not counted (a new process's first
        requests are slow)."""
        if self._process is None:
            self.start()
            await asyncio.sleep(warmup)
        since = time.monotonic()
        await asyncio.sleep(seconds)
        return await self.phase(since, time.monotonic())

    def close(self) -> None:
        """Stop the clients (they finish their requests in flight); idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()  # the signal to stop; the reader thread reads to the end
        try:
            process.wait(timeout=self.timeout + 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if process.stdout is not None:
            process.stdout.close()


def p99_bound(baseline: Phase) -> float:
    """The p99 the good clients may reach under attack: max(3x baseline, baseline + 250 ms)."""
    return max(3 * baseline.p99, baseline.p99 + 0.25)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def report(attack: str, baseline: Phase, attacked: Phase, **extra: object) -> str:
    """Print (and keep for the summary) the one line of figures of an attack test."""
    line = (
        f"ADV {attack}: good {attacked.count} ok {attacked.success_rate:.1%} "
        f"p99 {_ms(attacked.p99)} (baseline {baseline.count} ok {baseline.success_rate:.1%} "
        f"p99 {_ms(baseline.p99)}; bound {_ms(p99_bound(baseline))})"
    )
    if extra:
        line += "; " + ", ".join(f"{k}={v}" for k, v in extra.items())
    failures = attacked.failures + baseline.failures
    if failures:
        line += f"; good failures {dict(failures)}"
    print(line)
    FIGURES.append(line)
    return line


async def check_good(good: GoodClients, baseline: Phase, attacked: Phase) -> None:
    """Good clients were all served under attack, and their p99 stayed within `p99_bound`.

    When the p99 is over the bound, the baseline is measured again after the attack (every
    attacker gone): if the machine is that slow without the attacker too, the worse of the two
    baselines is the one to compare with (this machine is shared; its load moves). A lasting
    effect of the attack itself is caught by the other checks (memory, release, health).
    """
    assert baseline.count > 0
    assert baseline.success_rate == 1.0, f"baseline failed: {dict(baseline.failures)}"
    assert attacked.count > 0, "no good request completed during the attack"
    assert attacked.success_rate == 1.0, (
        f"good requests failed under attack: {dict(attacked.failures)} of {attacked.count}"
    )
    if attacked.p99 <= p99_bound(baseline):
        return
    after = await good.run()
    worse = max(baseline, after, key=lambda phase: phase.p99)
    note = (
        f"  p99 {_ms(attacked.p99)} over the bound {_ms(p99_bound(baseline))}; baseline again "
        f"after the attack: p99 {_ms(after.p99)} ({after.count} ok {after.success_rate:.1%})"
    )
    print(note)
    FIGURES.append(note)
    assert attacked.p99 <= p99_bound(worse), (
        f"good p99 {_ms(attacked.p99)} under attack > bound {_ms(p99_bound(worse))} "
        f"(baseline p99 {_ms(baseline.p99)} before, {_ms(after.p99)} after the attack)"
    )


def plain_client(url: str, timeout: float = 10.0, **options: Any) -> httpx.AsyncClient:
    """An httpx client for plain HTTP on loopback that skips what costs time on a busy machine
    and is of no use here: loading CA certificates (`verify=False`; no TLS is spoken) and
    reading proxy settings from the environment."""
    return httpx.AsyncClient(
        base_url=url, timeout=timeout, verify=False, trust_env=False, **options
    )


# -- what is stored --------------------------------------------------------------------------


async def stored_messages(url: str, service: str) -> Counter[str]:
    """Every stored message of `service`, counted (read through `url`, all pages)."""
    found: Counter[str] = Counter()
    params: dict[str, Any] = {"service": service, "limit": 1000}
    async with plain_client(url, 10.0) as client:
        for _ in range(1000):
            response = await client.get("/api/logs", params=params)
            assert response.status_code == 200, f"reading back: {response.status_code}"
            page = response.json()
            found.update(item["message"] for item in page["items"])
            if not page.get("next_cursor"):
                return found
            params["cursor"] = page["next_cursor"]
    raise AssertionError("reading back did not end")


async def check_stored_once(url: str, good: GoodClients) -> Counter[str]:
    """Every acknowledged good message is stored exactly once; nothing stored twice or unsent
    (the good clients are stopped first)."""
    good.close()
    stored = await stored_messages(url, good.tag)
    doubled = {m: n for m, n in stored.items() if n > 1}
    lost = good.acked - stored.keys()
    unknown = stored.keys() - good.attempted
    assert not doubled, f"stored more than once: {sorted(doubled.items())[:5]}"
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:5]}"
    assert not unknown, f"stored but never sent: {sorted(unknown)[:5]}"
    return stored


# -- the LB's view ---------------------------------------------------------------------------


async def services(url: str) -> list[dict[str, Any]]:
    """The LB's `GET /api/registration/services`."""
    async with plain_client(url, 5.0) as client:
        response = await client.get("/api/registration/services")
        response.raise_for_status()
        listed: list[dict[str, Any]] = response.json()
        return listed


async def ejections(url: str) -> int:
    """Passive ejections so far, over all instances (each instance's `ejections` counter)."""
    return sum(int(s.get("ejections", 0)) for s in await services(url))


class StatusWatch:
    """Polls the LB's instance list while an attack runs and remembers every non-healthy one."""

    def __init__(self, url: str, interval: float = 0.25) -> None:
        self.url = url
        self.interval = interval
        self.seen: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StatusWatch:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _poll(self) -> None:
        async with plain_client(self.url, 2.0) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    listed = (await client.get("/api/registration/services")).json()
                    for s in listed:
                        if s.get("status") != "healthy":
                            self.seen[f"{s.get('name')}:{s.get('status')}"] += 1
                await asyncio.sleep(self.interval)


# -- memory ----------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The resident memory of process `pid` now (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler:
    """Samples a process's resident memory every `interval` s: `start` and the `peak` seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.start = rss_bytes(pid)
        self.peak = self.start
        self._task: asyncio.Task[None] | None = None

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 2**20

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, rss_bytes(self.pid))

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(self.interval)


# -- raw attackers ---------------------------------------------------------------------------


@dataclass
class RawResponse:
    """One response read off a raw connection."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes = b""
    complete: bool = False

    def json_error(self) -> str:
        """The `error` field of a JSON body, or the start of the body."""
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return repr(self.body[:200])
        if isinstance(parsed, dict):
            return str(parsed.get("error", parsed))[:200]
        return repr(self.body[:200])


class _ResponseCollector:
    """httptools callbacks that fill in one `RawResponse` at a time."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.headers_done = False
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class RawConnection:
    """One client TCP connection to the stack, for sending whatever an attacker wants.

    Every operation is bounded by a timeout; `close()` aborts the socket (nothing lingers).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.sent = 0

    @classmethod
    async def open(cls, url: str, within: float = 5.0) -> RawConnection:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port, limit=2**20)
        return cls(reader, writer)

    @property
    def unsent(self) -> int:
        """Bytes written but still in this side's buffer (not yet taken by the kernel)."""
        return self.writer.transport.get_write_buffer_size()

    async def send(self, data: bytes, within: float = 5.0) -> None:
        """Write `data` and wait until it is taken by the kernel (TimeoutError after `within` s)."""
        self.writer.write(data)
        self.sent += len(data)
        async with asyncio.timeout(within):
            await self.writer.drain()

    async def response(self, within: float = 5.0, *, body: bool = True) -> RawResponse | None:
        """The next response (head only when `body` is false); None if the server closed first.

        Raises:
            TimeoutError: no (whole) response within `within` seconds.
        """
        collector = _ResponseCollector()
        parser = httptools.HttpResponseParser(collector)
        async with asyncio.timeout(within):
            got_any = False
            while not (collector.done or (collector.headers_done and not body)):
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    data = b""
                if not data:
                    if not got_any:
                        return None
                    with contextlib.suppress(httptools.HttpParserError):
                        parser.feed_data(b"")
                    break
                got_any = True
                with contextlib.suppress(httptools.HttpParserUpgrade):
                    parser.feed_data(data)
        return RawResponse(
            status=parser.get_status_code(),
            headers=collector.headers,
            body=bytes(collector.body),
            complete=collector.done,
        )

    async def closed_by_peer(self, within: float) -> bool:
        """True when the server closes the connection within `within` s (what it sends is read
        and dropped)."""
        try:
            async with asyncio.timeout(within):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    async def read_all(self, within: float) -> bytes:
        """Whatever the server sends until it closes, or for `within` seconds."""
        chunks: list[bytes] = []
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(within):
                while data := await self.reader.read(65536):
                    chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        """Abort the socket: a hostile client does not say goodbye."""
        self.writer.transport.abort()


@contextlib.asynccontextmanager
async def raw_connections(
    url: str, count: int, *, within: float = 10.0, batch: int = 50
) -> AsyncIterator[list[RawConnection]]:
    """`count` open connections (opened `batch` at a time), all aborted on exit."""
    opened: list[RawConnection] = []
    try:
        for start in range(0, count, batch):
            size = min(batch, count - start)
            results = await asyncio.gather(
                *(RawConnection.open(url, within) for _ in range(size)), return_exceptions=True
            )
            opened += [r for r in results if isinstance(r, RawConnection)]
            errors = [r for r in results if not isinstance(r, RawConnection)]
            if errors:
                raise AssertionError(
                    f"could open only {len(opened)} of {count} connections: {errors[0]!r}"
                )
        yield opened
    finally:
        for conn in opened:
            conn.close()


def close_all(conns: Iterable[RawConnection]) -> None:
    """Abort every connection."""
    for conn in conns:
        conn.close()


# -- running an attack beside the good clients -----------------------------------------------


async def under_attack(
    good: GoodClients, attack: Awaitable[T], *, min_seconds: float = 2.5
) -> tuple[Phase, T]:
    """Run `attack` while the good clients run (at least `min_seconds`); their phase (the
    requests started meanwhile) and the attack's result."""
    if not good.running:
        await good.run(0)
    started = time.monotonic()
    result = await attack
    remaining = min_seconds - (time.monotonic() - started)
    if remaining > 0:
        await asyncio.sleep(remaining)
    return await good.phase(started, time.monotonic()), result


@dataclass
class Attempt:
    """How one oversize attempt ended."""

    status: int | None = None
    """The status the attacker got (None: none)."""
    accepted_mib: float = 0.0
    """MiB the kernel had taken from the attacker when the answer came (or at the end)."""
    seconds: float = 0.0
    """From the first byte sent to the answer (or the end)."""
    error: str = ""


async def oversize_attempt(
    url: str, head: bytes, filler: bytes, total: int, *, deadline: float = 10.0
) -> Attempt:
    """Send `head` then `filler` repeatedly (`total` bytes in all) at full speed while reading
    the answer; stop sending as soon as the answer comes or the server closes."""
    attempt = Attempt()
    started = time.perf_counter()
    conn = await RawConnection.open(url)
    try:

        async def sender() -> None:
            await conn.send(head, within=deadline)
            while conn.sent < total:
                await conn.send(filler, within=deadline)

        sending = asyncio.create_task(sender())
        reading = asyncio.create_task(conn.response(within=deadline))
        try:
            done, _ = await asyncio.wait(
                {sending, reading}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED
            )
            if sending in done and reading not in done:
                exc = sending.exception()
                if exc is None:  # everything sent: the answer may still come
                    await asyncio.wait({reading}, timeout=deadline)
            attempt.seconds = time.perf_counter() - started
            attempt.accepted_mib = (conn.sent - conn.unsent) / 2**20
            if reading.done():
                if reading.exception() is None:
                    response = reading.result()
                    attempt.status = None if response is None else response.status
                    if response is None:
                        attempt.error = "closed without an answer"
                else:
                    attempt.error = repr(reading.exception())
            else:
                attempt.error = f"no answer within {deadline:g} s"
        finally:
            for task in (sending, reading):
                task.cancel()
            await asyncio.gather(sending, reading, return_exceptions=True)
    finally:
        conn.close()
    return attempt


async def repeat_for(
    seconds: float, factory: Callable[[], Awaitable[T]], *, limit: int, stop_on: Callable[[T], bool]
) -> list[T]:
    """Call `factory` again and again for `seconds` (at most `limit` times); stop early at the
    first result for which `stop_on` is true (a failure: no point hammering a broken stack)."""
    results: list[T] = []
    ends = time.monotonic() + seconds
    while time.monotonic() < ends and len(results) < limit:
        result = await factory()
        results.append(result)
        if stop_on(result):
            break
    return results
