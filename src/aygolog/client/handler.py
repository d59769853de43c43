"""`AygologHandler`: a `logging.Handler` that ships records to aygolog without losing them.

    import logging
    from aygolog.client import AygologHandler

    handler = AygologHandler("http://127.0.0.1:8080", service="checkout", spool_dir="/var/spool/x")
    logging.getLogger().addHandler(handler)

How it behaves:

- `emit` puts the record on a bounded in-memory queue; it never touches the network and never
  raises (a failure goes to `logging.Handler.handleError`). It does as little as it can: for a
  plain record (no `extra=` fields, exception or stack) it formats only the message and leaves
  building and encoding the entry to the sender threads (with the level and attributes cached
  per logger and level); other records are mapped and encoded at once, so that later
  changes to their values cannot change what is sent. `handle` does not take `logging`'s
  per-handler lock around `emit`, which has its own, shorter one.
- When the queue is full (`capacity`, default 10,000; the batches being sent are held besides)
  while delivery is working (no failed attempt pending), `emit` waits up to `max_wait` (default
  0.5 s) for a sender to take records: a burst faster than the server takes is slowed to its
  pace instead of losing records. It never waits while the server is failing, and after a wait
  runs out it does not wait again until a sender has taken records (a stuck request costs one
  wait, not one per record). Then the `overflow` policy drops the oldest or the newest record;
  `dropped` counts them, and stderr says so at most once a `report_interval`. `peak_queued`
  says how close the bursts so far came to `capacity`.
- `max_in_flight` daemon threads (default 3) send a batch once `batch_size` records (default
  1,000) are queued or the oldest is `flush_interval` old (default 0.2 s), to `POST /api/logs`,
  so up to `max_in_flight` requests are in flight at once. A sender that finds more than
  `batch_size` queued (it is behind, in a burst) takes its share of the queue (divided among the
  idle senders) up to `max_batch_size` (default 10,000, the server's default limit): fewer,
  larger requests cost less per record here, where the senders share the GIL with the code that
  logs (each request waits for the GIL a few times), and at the LB; and what is being sent is
  held besides the queue, so a sender that catches up empties it at once. Batches ask for
  `Prefer: return=minimal`: the server leaves out the ids the handler would not read. So one
  process keeps up with a burst of `logging` calls in a tight loop
  (`benchmarks/handler_burst.py`). Batches sent at the same time may be stored in either order
  (each entry keeps its record's `timestamp`); `max_in_flight=1` keeps the order of records as
  stored. Each batch gets an `Idempotency-Key` when it is formed and keeps it through every
  retry and the spool, so the server stores it exactly once.
- Failures: connection errors, 429 and 5xx are retried with exponential backoff and full jitter,
  honouring `Retry-After`, for as long as it takes (the batch waits in memory; the queue keeps
  its bound). Entries the server refuses (422) are counted in `invalid`, reported, and the rest
  of the batch is sent; a batch that is too large is split.
- `spool_dir`: a batch that fails is written to disk (with its key) at once, and while the server
  stays unreachable new batches go straight there; spooled batches are sent, oldest first, when
  the server answers again, also by a later process using the same directory.
- `close()` (called by `logging.shutdown()` at interpreter exit) sends what is queued within
  `close_timeout` (default 5 s), spools what it could not send (with `spool_dir`), and reports the
  rest on stderr; `undelivered` holds that count. Batches already in the spool stay there for
  the next start.

Record mapping: `levelname` -> level (unknown names by number), the logger's name -> attribute
`logger`, `service` from the handler, `exc_info` -> attribute `exception` (the formatted
traceback, its end kept if too long), `stack_info` -> `stack`, fields passed with `extra=` ->
attributes (non-scalar values as strings; `trace_id` becomes the entry's trace id),
`record.created` -> timestamp. The message is `record.getMessage()`: level, logger and traceback
have fields of their own, and `logging.basicConfig(handlers=[...])` gives every handler a
formatter that would repeat them in the text. `use_formatter=True` sends `self.format(record)`
instead. Values are trimmed to the server's default `Limits`, so a record is never refused for
its size.

structlog through the standard library works two ways: with `render_to_log_kwargs` as the last
processor the key-values arrive as `extra` (attributes); with `wrap_for_formatter` (and no
`use_formatter`), the event dict's `event` is the message and its other keys attributes.

Records logged by the handler's own threads (e.g. httpx's request log) are ignored, so attaching it
to the root logger cannot feed back into itself. After `os.fork()` (e.g. a pre-forking server
that configured logging before forking) the child starts its own sender threads and, when the
made its client from a URL, its own connections; what the parent had queued stays the parent's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import sys
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, TextIO

import httpx
import msgspec

from aygolog.client._base import (
    NO_RETRY,
    PreparedBatch,
    RetryPolicy,
    body_size,
    encode_log,
    new_idempotency_key,
)
from aygolog.client._sync import LogClient
from aygolog.errors import AygologError, Conflict, RateLimited, Unavailable, ValidationError
from aygolog.models import AttributeValue, Limits, LogLevel, NewLog
from aygolog.validation import SERVICE_PATTERN

__all__ = ["AygologHandler", "Overflow", "Spool"]

Overflow = Literal["drop_oldest", "drop_newest"]

_STANDARD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_TRACE_ID_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-"
)
_FORMATTER: Final = logging.Formatter()
# structlog keys that the entry holds in its own fields (or that are structlog's internals).
_STRUCTLOG_FIELDS: Final = frozenset({"event", "level", "timestamp", "logger"})
_SPOOL_MAGIC: Final = b"aygolog-spool 1"
_DEFAULT_BACKOFF: Final = RetryPolicy(retries=0, backoff_base=0.2, backoff_max=10.0)


def _trim(text: str, max_bytes: int, *, keep_end: bool = False) -> str:
    """`text` within `max_bytes` of UTF-8, cut on a character boundary, marked with an ellipsis."""
    if len(text) * 4 <= max_bytes:
        return text
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    room = max(0, max_bytes - 3)  # "…" is 3 bytes
    if keep_end:
        return "…" + data[len(data) - room :].decode("utf-8", "ignore")
    return data[:room].decode("utf-8", "ignore") + "…"


class Spool:
    """Batches on disk, oldest first: one file each, holding the idempotency key and the entries.

    A file is written under a temporary name, fsynced and renamed, so a crash never leaves half a
    batch under a real name. Several processes may share a directory: a batch sent twice is
    stored once, thanks to its key (within the server's idempotency window, 24 h by default).
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 256 * 1024**2):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._files: deque[tuple[Path, int, int]] = deque()  # path, bytes, records
        self._seq = 0
        for path in sorted(self.directory.glob("*.batch")):
            try:
                with path.open("rb") as file:
                    count = self._header(file.readline())[1]
                self._files.append((path, path.stat().st_size, count))
            except ValueError:
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".bad"))
            except OSError:
                continue  # gone meanwhile (another process sent it)

    @staticmethod
    def _header(line: bytes) -> tuple[str, int]:
        parts = line.split()
        if len(parts) != 4 or b" ".join(parts[:2]) != _SPOOL_MAGIC:
            raise ValueError("not a spool file")
        return parts[2].decode("ascii"), int(parts[3])

    def __len__(self) -> int:
        return len(self._files)

    @property
    def records(self) -> int:
        """How many records are spooled."""
        with self._lock:
            return sum(count for _, _, count in self._files)

    @property
    def size(self) -> int:
        """Bytes on disk."""
        with self._lock:
            return sum(size for _, size, _ in self._files)

    def put(self, batch: PreparedBatch) -> bool:
        """Write a batch; False when that would exceed `max_bytes` (or the disk refused)."""
        data = b"%s %s %d\n" % (_SPOOL_MAGIC, batch.idempotency_key.encode(), batch.count)
        data += b"\n".join(batch.items) + b"\n"
        if self.size + len(data) > self.max_bytes:
            return False
        with self._lock:
            self._seq += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.batch"
        path = self.directory / name
        temporary = path.with_suffix(".tmp")
        try:
            with temporary.open("wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            return False
        with self._lock:
            self._files.append((path, len(data), batch.count))
        return True

    def peek(self) -> tuple[Path, PreparedBatch] | None:
        """The oldest batch (files that cannot be read are renamed `*.bad` and skipped)."""
        while True:
            with self._lock:
                if not self._files:
                    return None
                path = self._files[0][0]
            try:
                lines = path.read_bytes().split(b"\n")
                key, count = self._header(lines[0])
                items = tuple(line for line in lines[1:] if line)
                if len(items) != count:
                    raise ValueError("truncated spool file")
                return path, PreparedBatch(items, key)
            except FileNotFoundError:  # another process sent it
                self.remove(path)
            except (OSError, ValueError, UnicodeDecodeError):
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".bad"))
                self.remove(path)

    def remove(self, path: Path) -> None:
        """Forget a batch and delete its file."""
        with self._lock:
            self._files = deque(f for f in self._files if f[0] != path)
        with contextlib.suppress(OSError):
            path.unlink()


class AygologHandler(logging.Handler):
    """A `logging.Handler` that never blocks, never raises, and never loses or doubles a record.

    Args:
        target: the LB's (or an instance's) URL, or a `LogClient` to use (not closed by us).
        service: the service of every entry.
        level: the handler's level.
        capacity: the most records waiting in the queue (the batches being sent, at most
            `max_in_flight` x `max_batch_size` records, are held besides).
        overflow: which record to drop when full: `"drop_oldest"` or `"drop_newest"`.
        max_wait: how long `emit` may wait for room in a full queue while delivery is working
            (0: never wait, drop at once).
        batch_size: a batch is sent once this many records are queued (or the oldest is
            `flush_interval` old).
        max_batch_size: the most records per request: a sender that finds more than
            `batch_size` queued takes its share of them (the queue divided among the idle
            senders), up to this and the client's `max_batch_items` (never fewer than
            `batch_size`). A server whose `AYGOLOG_MAX_BATCH_ITEMS` is lower refuses larger
            batches (413) and the handler halves them until they fit, for every such batch:
            set this to that limit.
        max_in_flight: the most requests at once (each from its own sender thread).
        flush_interval: send whatever is queued once the oldest record is this many seconds old.
        close_timeout: how long `close()` may take to deliver what is queued.
        spool_dir: where batches that cannot be delivered wait (None: in memory only).
        spool_max_bytes: the most the spool may hold; beyond it batches wait in memory.
        backoff: the backoff between attempts (`retries` is not used: it retries until closed).
        limits: what the server accepts; records are trimmed to fit.
        report_interval: the least time between two stderr reports of dropped records.
        use_formatter: send `self.format(record)` as the message, not `record.getMessage()`.
        compress: send batches gzipped (`Content-Encoding: gzip`; log text shrinks 5-30x),
            for a slow or metered link to the server. It costs CPU on both sides; on a fast
            local network it does not pay.
        api_key, timeout, balance: for the client the handler makes from a URL.
        stream: where reports go (default: `sys.stderr` at the time of writing).
    """

    def __init__(
        self,
        target: str | LogClient,
        *,
        service: str | None = None,
        level: int | str = logging.NOTSET,
        capacity: int = 10_000,
        overflow: Overflow = "drop_oldest",
        max_wait: float = 0.5,
        batch_size: int = 1000,
        max_batch_size: int = 10_000,
        max_in_flight: int = 3,
        flush_interval: float = 0.2,
        close_timeout: float = 5.0,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 256 * 1024**2,
        backoff: RetryPolicy = _DEFAULT_BACKOFF,
        limits: Limits | None = None,
        report_interval: float = 60.0,
        use_formatter: bool = False,
        compress: bool = False,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 10.0,
        balance: Literal["lb", "client"] = "lb",
        stream: TextIO | None = None,
    ) -> None:
        if overflow not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"overflow must be 'drop_oldest' or 'drop_newest', not {overflow!r}")
        if capacity < 1 or batch_size < 1 or max_in_flight < 1:
            raise ValueError("capacity, batch_size and max_in_flight must be at least 1")
        if not 0 <= max_wait <= 60:
            raise ValueError("max_wait must be 0-60 seconds")
        self.limits = limits or Limits()
        if service is not None and (
            len(service) > self.limits.max_service_chars or not SERVICE_PATTERN.fullmatch(service)
        ):
            raise ValueError(f"service {service!r}: use letters, digits and ._/-")
        self.service = service
        self.capacity = capacity
        self.overflow: Overflow = overflow
        self.max_wait = max_wait
        self.batch_size = batch_size
        self.max_batch_size = max(batch_size, max_batch_size)
        self.max_in_flight = max_in_flight
        self.flush_interval = flush_interval
        self.close_timeout = close_timeout
        self.backoff = backoff
        self.report_interval = report_interval
        self.use_formatter = use_formatter
        self.compress = compress
        self._stream = stream
        self._make_client: Callable[[], LogClient] | None = None
        if isinstance(target, LogClient):
            self.client = target
        else:
            url = target
            self._make_client = lambda: LogClient(
                url, timeout=timeout, api_key=api_key, balance=balance
            )
            self.client = self._make_client()
        self._owns_client = self._make_client is not None
        self._max_batch_bytes = self.client._core.max_batch_bytes
        self._max_take = max(batch_size, min(max_batch_size, self.client._core.max_batch_items))
        self.spool = Spool(spool_dir, max_bytes=spool_max_bytes) if spool_dir else None

        self.dropped = 0
        """Records dropped because the queue was full."""
        self.invalid = 0
        """Records the server refused (they would never be accepted)."""
        self.sent = 0
        """Records delivered."""
        self.undelivered = 0
        """Records neither delivered nor spooled (counted at close)."""
        self.failed_attempts = 0
        """Sends that failed and were (or will be) retried: a sign of outages."""
        self.peak_queued = 0
        """The most records that waited in the queue at once (not counting those being sent):
        how close the bursts so far came to `capacity`."""

        # `emit` may leave the mapping of plain records to the sender thread unless a subclass
        # maps records its own way.
        self._plain_ok = type(self).map_record is AygologHandler.map_record
        self._fixed: dict[tuple[str, int, str], tuple[LogLevel, dict[str, AttributeValue]]] = {}
        self._max_message_bytes = self.limits.max_message_bytes
        self._lock = threading.Lock()  # `emit` takes it bare: `with` on a Condition costs more
        self._cond = threading.Condition(self._lock)
        self._queue: deque[tuple[float, _Item]] = deque()
        self._slots: list[_Slot] = []
        self._room_waiters = 0
        """Callers of `emit` waiting for room in a full queue (lock held)."""
        self._stalled = False
        """A wait for room ran out; none waits again until a sender takes records."""
        self._failures = 0
        self._next_attempt = 0.0
        self._flushing = 0
        self._attempts = 0
        self._closing = False
        self._deadline = math.inf
        self._spool_ok_at = 0.0
        self._rng = random.Random()
        self._reported = {"dropped": 0, "invalid": 0, "undelivered": 0}
        self._last_report = -math.inf
        # Last: `logging` keeps a reference to every handler made and flushes them at exit, so a
        # handler whose arguments are refused above must not have become one.
        super().__init__(level)
        self._start_workers()

    def _start_workers(self) -> None:
        self._pid = os.getpid()
        self._slots = [_Slot(i) for i in range(self.max_in_flight)]
        for slot in self._slots:
            name = f"aygolog-handler-{slot.index}"
            slot.thread = threading.Thread(target=self._run, args=(slot,), name=name, daemon=True)
            slot.thread.start()
        self._idents = frozenset(slot.thread.ident for slot in self._slots if slot.thread)

    def _alive(self) -> list[_Slot]:
        """The slots whose sender thread is still running."""
        return [s for s in self._slots if s.thread is not None and s.thread.is_alive()]

    def _busy(self) -> bool:
        """Whether any sender holds records (lock held)."""
        return any(s.current is not None or s.preparing for s in self._slots)

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()

    def _after_fork(self) -> None:
        """In a forked child: the parent's worker thread did not come along, its lock may be
        held for ever and its queue is the parent's to send. Start afresh."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue = deque()
        self._room_waiters = 0
        self._stalled = False
        self._failures = 0
        self._next_attempt = 0.0
        if self._make_client is not None:  # never share pooled sockets with the parent
            self.client = self._make_client()
        if self.spool is not None:
            self.spool._lock = threading.Lock()
        self._start_workers()

    # -- the caller's side ------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Records waiting in memory (the queue and the batch being sent)."""
        self._check_fork()
        with self._cond:
            held = sum(s.preparing + (s.current.count if s.current else 0) for s in self._slots)
            return len(self._queue) + held

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and emit the record, as `logging.Handler.handle` does but without taking the
        handler's I/O lock around `emit`: `emit` is thread-safe on its own (a shorter lock)."""
        passed: object = self.filter(record)
        if isinstance(passed, logging.LogRecord):  # Python 3.12+: a filter may return a record
            record = passed
        if passed:
            self.emit(record)
        return bool(passed)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record (never touches the network, never raises; a full queue may wait up
        to `max_wait` for a sender while delivery works)."""
        try:
            if record.process != self._pid:  # the record knows the pid: no system call
                self._check_fork()
            if threading.get_ident() in self._idents:
                return  # our own thread's logs (httpx's): shipping them would feed back
            item: _Item
            fields = record.__dict__
            if (
                self._plain_ok
                and not self.use_formatter
                and not record.exc_info
                and not record.stack_info
                and fields.keys() <= _STANDARD_ATTRS
                and type(record.msg) is not dict
            ):
                # The common record: only its message needs formatting now (its arguments may
                # change later); the sender thread builds and encodes the entry.
                item = (record.created, record.levelname, record.levelno, record.name,
                        record.getMessage())  # fmt: skip
            else:
                item = encode_log(self.map_record(record))
            now = time.monotonic()
            with self._lock:
                if self._closing:
                    self.dropped += 1
                    return
                if (
                    len(self._queue) >= self.capacity
                    and self.max_wait > 0
                    and not self._stalled
                    and not self._failures
                ) and self._wait_for_room(now):  # closed meanwhile
                    self.dropped += 1
                    return
                if len(self._queue) >= self.capacity:
                    self.dropped += 1
                    if self.overflow == "drop_newest":
                        return
                    self._queue.popleft()
                self._queue.append((now, item))
                size = len(self._queue)
                if size > self.peak_queued:
                    self.peak_queued = size
                if size == 1 or size == self.batch_size:
                    self._cond.notify_all()
        except Exception:
            self.handleError(record)

    def _wait_for_room(self, now: float) -> bool:
        """Wait (lock held) until a sender takes records, delivery fails, the handler closes
        (then True) or `max_wait` ends."""
        end = now + self.max_wait
        self._room_waiters += 1
        try:
            while len(self._queue) >= self.capacity and not self._failures and not self._closing:
                left = end - time.monotonic()
                if left <= 0:
                    self._stalled = True
                    break
                self._cond.wait(left)
        finally:
            self._room_waiters -= 1
        return self._closing

    def map_record(self, record: logging.LogRecord) -> NewLog:
        """The `NewLog` for a record (override to change the mapping)."""
        limits = self.limits
        attributes: dict[str, AttributeValue] = {"logger": record.name}
        extra: dict[str, object] = {}
        msg = record.msg
        if isinstance(msg, dict) and not record.args and not self.use_formatter:
            # structlog's wrap_for_formatter: the event dict travels in `msg`.
            message = str(msg.get("event", ""))
            extra.update(
                (str(k), v)
                for k, v in msg.items()
                if k not in _STRUCTLOG_FIELDS and not str(k).startswith("_")
            )
        elif self.use_formatter:
            message = self.format(record)
        else:
            message = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or _FORMATTER.formatException(record.exc_info)
            attributes["exception"] = text
        if record.stack_info:
            attributes["stack"] = record.stack_info
        extra.update(
            (k, v)
            for k, v in record.__dict__.items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")
        )
        trace_id = None
        raw_trace = extra.pop("trace_id", None)
        if isinstance(raw_trace, str) and raw_trace and set(raw_trace) <= _TRACE_ID_CHARS:
            if len(raw_trace) <= limits.max_trace_id_chars:
                trace_id = raw_trace
        elif raw_trace is not None:
            extra["trace_id"] = raw_trace
        for key, value in extra.items():
            if len(attributes) >= limits.max_attributes:
                break
            if value is None or key in attributes:
                continue
            name = str(key)[: limits.max_attribute_key_chars] or "_"
            attributes[name] = _attribute(value)
        for key, value in attributes.items():
            if isinstance(value, str):
                keep_end = key in ("exception", "stack")
                attributes[key] = _trim(value, limits.max_attribute_value_bytes, keep_end=keep_end)
        level = _record_level(record.levelname, record.levelno)
        return NewLog(
            message=_trim(message, limits.max_message_bytes) if message.strip() else "(empty)",
            level=level,
            service=self.service,
            timestamp=datetime.fromtimestamp(record.created, UTC),
            attributes=attributes,
            trace_id=trace_id,
        )

    def flush(self) -> None:
        """Send what is queued now and wait for it (see `drain`; at most `close_timeout`)."""
        self.drain()

    def drain(self, timeout: float | None = None) -> bool:
        """Send what is queued now; wait until it is delivered or spooled.

        Returns True when nothing is left in memory; False when the server is failing (it does
        not wait out an outage) or `timeout` (default `close_timeout`) passed first.
        """
        self._check_fork()
        deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
        with self._cond:
            if self._failing() or not self._alive():
                return not self._queue and not self._busy()
            attempts = self._attempts
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._queue or self._busy():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or (self._failing() and self._attempts != attempts):
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._flushing -= 1

    def _failing(self) -> bool:
        return self._failures > 0

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued within `timeout` (default `close_timeout`), spool or report
        the rest, and stop. Called by `logging.shutdown()` at interpreter exit."""
        self._check_fork()
        limit = self.close_timeout if timeout is None else timeout
        now = time.monotonic()
        with self._cond:
            first = not self._closing
            self._closing = True
            # The worker stops a little early, so that spooling and reporting fit in `limit`.
            self._deadline = min(self._deadline, now + limit - min(0.25, limit / 5))
            self._next_attempt = min(self._next_attempt, now)  # one more try at once
            self._cond.notify_all()
        if first:
            for slot in self._slots:
                if slot.thread is not None:
                    slot.thread.join(max(0.0, now + limit - time.monotonic()))
            with self._cond:
                for slot in self._alive():  # stuck in a request: what it holds may be lost
                    self._abandon(slot)
            if self.spool is not None and len(self.spool):
                self._write(
                    f"aygolog: {self.spool.records} log records are spooled in"
                    f" {self.spool.directory}; they will be sent when the server is reachable"
                )
            self._report(final=True)
            if self._owns_client and not self._alive():
                self.client.close()
        super().close()

    # -- the worker -------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stderr
        with contextlib.suppress(Exception):
            stream.write(text + "\n")
            stream.flush()

    def _report(self, *, final: bool = False) -> None:
        now = time.monotonic()
        with self._cond:
            counts = {"dropped": self.dropped, "invalid": self.invalid}
            counts["undelivered"] = self.undelivered
            new = {k: v - self._reported[k] for k, v in counts.items() if v > self._reported[k]}
            if not new or (not final and now - self._last_report < self.report_interval):
                return
            self._reported.update(counts)
            self._last_report = now
        where = self.client.base_url
        parts = []
        if "dropped" in new:
            parts.append(
                f"dropped {new['dropped']} log records: the queue was full ({self.capacity},"
                f" {self.overflow})"
            )
        if "invalid" in new:
            parts.append(f"{new['invalid']} log records were refused by the server as invalid")
        if "undelivered" in new:
            parts.append(f"{new['undelivered']} log records could not be delivered to {where}")
        self._write("aygolog: " + "; ".join(parts))

    def _abandon(self, slot: _Slot) -> None:
        """At the end: spool what `slot` and the queue hold, or count it undelivered (lock held)."""
        batches: list[PreparedBatch] = []
        if slot.current is not None:
            batches.append(slot.current)
            slot.current = None
        while self._queue:
            batch, rest = self._encode(self._take())
            self._queue.extendleft(reversed([(0.0, i) for i in rest]))
            batches.append(batch)
        for batch in batches:
            if self.spool is None or not self.spool.put(batch):
                self.undelivered += batch.count

    def _take(self) -> list[_Item]:
        """The next batch's records from the queue, not yet encoded (lock held).

        Up to `batch_size`, or, when more are queued (a burst the senders are behind on), this
        sender's share of them: fewer, larger requests cost less per record in this process
        (whose senders share the GIL with the code that logs) and on the server.
        """
        queue = self._queue
        count = len(queue)
        if count > self.batch_size:
            idle = sum(s.current is None and not s.preparing for s in self._slots) or 1
            count = min(count, max(self.batch_size, min(self._max_take, -(-count // idle))))
        taken = [queue.popleft()[1] for _ in range(count)]
        self._stalled = False
        if self._room_waiters:
            self._cond.notify_all()
        return taken

    def _encode(self, items: list[_Item]) -> tuple[PreparedBatch, list[bytes]]:
        """`items` as a batch within the byte limit, and the encoded items that did not fit."""
        encoded: list[bytes] = []
        size = 0
        limit = self._max_batch_bytes
        plain = self._encode_plain
        for item in items:
            data = item if isinstance(item, bytes) else plain(item)
            size += len(data)
            encoded.append(data)
        rest: list[bytes] = []
        if body_size(len(encoded), size) > limit:  # rare: large records; cut where it overflows
            size = 0
            for i, data in enumerate(encoded):
                if i and body_size(i + 1, size + len(data)) > limit:
                    encoded, rest = encoded[:i], encoded[i:]
                    break
                size += len(data)
        return PreparedBatch(tuple(encoded), new_idempotency_key()), rest

    def _encode_plain(self, item: _Plain) -> bytes:
        """The JSON of a record that `emit` found plain (no extras, exception or stack): the
        bytes `encode_log(self.map_record(record))` gives, with the level and the attributes
        (the logger's name) looked up once per level and logger. (Building the JSON from cached
        parts in Python, as before, cost as much per record as this, and took 40 more lines.)"""
        created, levelname, levelno, name, message = item
        fixed = self._fixed.get((levelname, levelno, name))
        if fixed is None:
            fixed = self._plain_fields(levelname, levelno, name)
        if not message or message.isspace():
            message = "(empty)"
        elif len(message) * 4 > self._max_message_bytes:
            message = _trim(message, self._max_message_bytes)
        return _encode_json(
            NewLog(
                message=message,
                level=fixed[0],
                service=self.service,
                timestamp=datetime.fromtimestamp(created, UTC),
                attributes=fixed[1],  # shared by the entries of a logger: only encoded
            )
        )

    def _plain_fields(
        self, levelname: str, levelno: int, name: str
    ) -> tuple[LogLevel, dict[str, AttributeValue]]:
        """A plain record's level and attributes, for this level and logger."""
        attributes: dict[str, AttributeValue] = {
            "logger": _trim(name, self.limits.max_attribute_value_bytes)
        }
        fixed = (_record_level(levelname, levelno), attributes)
        if len(self._fixed) >= 1024:  # loggers named at run time: keep the cache bounded
            self._fixed.clear()
        self._fixed[levelname, levelno, name] = fixed
        return fixed

    def _decide(self, slot: _Slot) -> tuple[str, float | None]:
        """What `slot`'s sender does next, and how long to wait first (lock held)."""
        now = time.monotonic()
        if self._closing and now >= self._deadline:
            return "exit", None
        queue = self._queue
        spool = self.spool if slot.index == 0 else None  # one sender empties the spool, in order
        if slot.current is None and queue:
            due = (
                self._closing
                or self._flushing
                or len(queue) >= self.batch_size
                or now - queue[0][0] >= self.flush_interval
            )
            if due:
                return "take", None
        if slot.current is not None:
            if now >= self._next_attempt:
                return "send", None
            if self.spool is not None and now >= self._spool_ok_at:
                return "spool", None
            return "wait", min(self._next_attempt, self._deadline) - now
        if self._closing and not queue:
            return "exit", None
        if spool is not None and len(spool) and now >= self._next_attempt:
            return "unspool", None
        wait: float | None = None
        if queue:
            wait = max(0.0, self.flush_interval - (now - queue[0][0]))
        if spool is not None and len(spool):
            until = max(0.0, self._next_attempt - now)
            wait = until if wait is None else min(wait, until)
        if self._closing:
            wait = min(wait if wait is not None else math.inf, self._deadline - now)
        return "wait", wait

    def _run(self, slot: _Slot) -> None:
        while True:
            items: list[_Item] = []
            with self._cond:
                action, wait = self._decide(slot)
                if action == "wait":
                    self._cond.wait(wait)
                    continue
                if action == "exit":
                    self._abandon(slot)
                    self._cond.notify_all()
                    return
                if action == "take":
                    items = self._take()
                    slot.preparing = len(items)
                batch = slot.current
            try:
                if action == "take":
                    self._prepare(slot, items)
                    continue
                if action == "spool" and batch is not None:
                    self._spool_current(slot, batch)
                elif action == "send" and batch is not None:
                    self._send_current(slot, batch)
                elif action == "unspool":
                    self._unspool()
            except Exception:  # a bug must not stop the worker: say so, back off, go on
                self._write("aygolog: handler error:\n" + traceback.format_exc())
                with self._cond:
                    self._failed(None)
            self._report()

    def _prepare(self, slot: _Slot, items: list[_Item]) -> None:
        """Encode taken records as `slot`'s batch, outside the lock (`emit` never waits for it)."""
        try:
            batch, rest = self._encode(items)
        except Exception:
            with self._cond:
                slot.preparing = 0
                self.invalid += len(items)  # cannot happen with plain values; never loop on it
            raise
        with self._cond:
            slot.preparing = 0
            self._queue.extendleft(reversed([(0.0, i) for i in rest]))
            slot.current = batch
            self._cond.notify_all()

    def _spool_current(self, slot: _Slot, batch: PreparedBatch) -> None:
        assert self.spool is not None
        stored = self.spool.put(batch)
        with self._cond:
            if stored:
                slot.current = None
            else:  # full or failing disk: keep it in memory, try the spool again later
                self._spool_ok_at = time.monotonic() + 5.0
            self._cond.notify_all()

    def _attempt_timeout(self) -> float | None:
        if not self._closing:
            return None
        return max(0.1, self._deadline - time.monotonic())

    def _deliver(self, batch: PreparedBatch) -> PreparedBatch | _Split | Exception | None:
        """Send once. None: delivered; a batch: send this instead (refused items removed);
        an exception: a failure to back off from."""
        try:
            count = self._post(batch)
        except ValidationError as exc:
            bad = {e.index for e in exc.errors if e.index is not None and e.index < batch.count}
            if bad and len(bad) < batch.count:
                self._refused(len(bad))
                return batch.without(bad)
            if batch.count > 1:
                return _Split(batch)
            self._refused(batch.count)
            return None
        except Conflict:
            return PreparedBatch(batch.items, new_idempotency_key())
        except (Unavailable, RateLimited) as exc:
            return exc
        except AygologError as exc:  # 401/403/404/500...: cannot deliver now
            return exc
        with self._cond:
            self.sent += count
        return None

    def _post(self, batch: PreparedBatch) -> int:
        """One `POST /api/logs` of `batch` (no retry: the caller backs off); how many it stored.

        It asks for `Prefer: return=minimal`: the ids, which the handler does not use, are then
        neither encoded by the instance nor read here (a server that ignores it sends them).
        """
        client = self.client
        core = client._core
        spec = core.batch_request(batch)
        if self.compress:  # level 1: most of the gain (text is repetitive) for a fifth of the CPU
            content = zlib.compress(batch.body, 1, wbits=31)
            headers = {**spec.headers, **_PREFER_MINIMAL, "Content-Encoding": "gzip"}
            spec = dataclasses.replace(spec, content=content, headers=headers)
        else:
            spec = dataclasses.replace(spec, headers={**spec.headers, **_PREFER_MINIMAL})
        attempts = core.attempts(spec, NO_RETRY)
        response = client._send(spec, attempts=attempts, timeout=self._attempt_timeout())
        stored = core.answer(spec, attempts, response, _Stored)
        if stored.count is not None:
            return stored.count
        return len(stored.ids) if stored.ids is not None else batch.count

    def _refused(self, count: int) -> None:
        with self._cond:
            self.invalid += count

    def _send_current(self, slot: _Slot, batch: PreparedBatch) -> None:
        outcome = self._deliver(batch)
        with self._cond:
            self._attempts += 1
            if outcome is None:
                self._succeeded()
                slot.current = None
            elif isinstance(outcome, _Split):
                first, second = outcome.batch.split()
                slot.current = first
                self._queue.extendleft(reversed([(0.0, i) for i in second.items]))
            elif isinstance(outcome, PreparedBatch):
                slot.current = outcome if outcome.count else None
            else:
                self._failed(outcome)
            self._cond.notify_all()

    def _unspool(self) -> None:
        assert self.spool is not None
        found = self.spool.peek()
        if found is None:
            return
        path, batch = found
        outcome = self._deliver(batch)
        with self._cond:
            self._attempts += 1
            if isinstance(outcome, Exception):
                self._failed(outcome)
                return
            self._succeeded()
        if isinstance(outcome, _Split):
            for half in outcome.batch.split():
                self.spool.put(half)
        elif isinstance(outcome, PreparedBatch) and outcome.count:
            self.spool.put(outcome)
        self.spool.remove(path)

    def _succeeded(self) -> None:
        self._failures = 0
        self._next_attempt = 0.0

    def _failed(self, error: Exception | None) -> None:
        """Back off after a failed attempt (lock held)."""
        raw = getattr(error, "retry_after", None)
        retry_after = min(float(raw), self.backoff.max_retry_after) if raw is not None else None
        delay = self.backoff.delay(self._failures, retry_after, self._rng)
        now = time.monotonic()
        if self._closing:  # a few more tries before the deadline rather than one long wait
            delay = min(delay, max(0.05, (self._deadline - now) / 4))
        self._failures += 1
        self.failed_attempts += 1
        self._next_attempt = now + delay
        if self._room_waiters:  # a caller waiting for room stops waiting: delivery is failing
            self._cond.notify_all()


class _Slot:
    """One sender thread and the batch it holds (at most `max_in_flight` requests at once)."""

    __slots__ = ("current", "index", "preparing", "thread")

    def __init__(self, index: int) -> None:
        self.index = index
        self.current: PreparedBatch | None = None
        """The batch it is sending (or waiting to retry)."""
        self.preparing = 0
        """Records it took from the queue and is encoding."""
        self.thread: threading.Thread | None = None


class _Stored(msgspec.Struct):
    """The answer to a batch: `count` under `Prefer: return=minimal`, else the ids."""

    count: int | None = None
    ids: list[str] | None = None


_PREFER_MINIMAL: Final = {"Prefer": "return=minimal"}


@dataclass(frozen=True, slots=True)
class _Split:
    """The server refused the whole batch without naming items (e.g. too large): halve it."""

    batch: PreparedBatch


def _attribute(value: object) -> AttributeValue:
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


_Plain = tuple[float, str, int, str, str]
"""A plain record as `emit` queues it: created, levelname, levelno, logger name, message."""
_Item = bytes | _Plain
"""A queued record: its JSON, or a plain record still to be encoded by the sender thread."""
_encode_json: Final = msgspec.json.Encoder().encode


def _record_level(levelname: str, levelno: int) -> LogLevel:
    """The entry's level for a record: by its name, else (a custom level) by its number."""
    try:
        return LogLevel.parse(levelname)
    except ValueError:
        return LogLevel.parse(levelno)
