"""`RedisStreamLogStore`: logs in one Redis stream, written and scanned by server-side Lua.

Layout (all keys share the deployment's hash tag, so the scripts stay valid on a cluster):

- `{prefix}:logs`: the stream. Each entry has four fields, in this order: `l` (severity digit
  0-5), `s` (service, '' for none), `i` (instance), `d` (the `NewLog` as JSON). The stream id is
  the receive time in ms plus a sequence, so a time range is an id range.
- `{prefix}:stats`: a hash of counters: `total`, `l:<severity>`, `s:<service>`, `i:<instance>`.
- `{prefix}:idem:<key>`: "digest\\ninstance\\nids" of a batch sent with an idempotency key.
- `{prefix}:rate:<t // 10>`: entries ingested in each 10-second bucket (kept 2 minutes), for
  the ingest rate over the last minute.
- The search index (`store/index.py`): `{prefix}:ix` (the current block number),
  `{prefix}:ixb` (a zset of blocks by first ms), `{prefix}:ix:<n>` (block n's summary) and
  `{prefix}:ix:f:<n>` (its bloom filter), `{prefix}:ixl` (the ids of the entries of warning
  and above, for level searches). Retention drops a block once its entries are gone. Every
  writer of a stream must index it, or none (entries written without the index are found by
  scans, but not by the postings of warning and above once the index covers the stream).

A batch (entries, counters and index) is written by one EVALSHA (`lua/append.lua`), packed by
hiredis and sent on a pooled connection (redis-py's own packing is Python, ~2 us per entry). A query
runs `lua/scan.lua`: it walks the index blocks of the range, skips those whose summary or bloom
filter rules out a match, and scans the rest (and any entries no block covers), keeping the
candidates that pass the plan's necessary conditions; Python checks them exactly
(`Plan.matches`). One call reads at most `StoreOptions.scan_budget` entries and
`IndexOptions.block_budget` blocks, and returns where to continue. It reads in XRANGEs of about
1 MiB each (sized by the entries seen so far), and, unfiltered, no more entries than the page
still needs (the seed's list of 10 reads 10). Counts (`count`) run the same scan, returning
counts instead of entries, and take whole blocks' counts from their summaries when the plan
filters nothing. `version` (`lua/version.lua`) reads only the newest entry and the length, for
readers that keep a page while it is current.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any, Final, Self

import hiredis
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from aygolog.errors import Conflict
from aygolog.models import (
    BatchResult,
    CountResult,
    Direction,
    LogEntry,
    LogLevel,
    LogPage,
    LogQuery,
    LogStats,
    NewLog,
)
from aygolog.query import Plan, plan_for
from aygolog.redis import KeySpace, create_single_redis
from aygolog.store.base import (
    StoreOptions,
    check_idempotency_key,
    check_query,
    format_stream_id,
    id_bounds,
    id_ms,
    page_limit,
    parse_stream_id,
    search_plan,
    stored_entry,
)
from aygolog.store.counting import Tally, count_frame
from aygolog.store.index import BloomHasher, IndexOptions
from aygolog.store.redis_errors import unavailable

__all__ = ["RedisStreamLogStore"]

_APPEND: Final = files("aygolog.store").joinpath("lua/append.lua").read_text()
_SCAN: Final = files("aygolog.store").joinpath("lua/scan.lua").read_text()
_VERSION: Final = files("aygolog.store").joinpath("lua/version.lua").read_text()
_SHA_APPEND: Final = hashlib.sha1(_APPEND.encode()).hexdigest()
_SHA_SCAN: Final = hashlib.sha1(_SCAN.encode()).hexdigest()
_SHA_VERSION: Final = hashlib.sha1(_VERSION.encode()).hexdigest()
_ENCODE: Final = msgspec.json.Encoder().encode
_PACK: Final = hiredis.pack_command
_DECODE_BODY: Final = msgspec.json.Decoder(NewLog).decode
_DIGITS: Final = tuple(str(i).encode() for i in range(len(LogLevel)))
_BLOCK_MS: Final = 1000
_BUCKET_SECONDS: Final = 10
_COUNTER_FIELDS: Final = frozenset({"level", "service", "instance"})
_LEVEL_NAMES: Final = tuple(LogLevel.from_severity(i).value for i in range(len(LogLevel)))
_NO_INDEX: Final = IndexOptions()
_CALL_ENTRIES: Final = 250
"""A scan call reads at most this many entries (fewer than `StoreOptions.scan_budget` when that
is larger), about a millisecond of Redis time: appends wait behind a Lua call, so this bounds
what a heavy query adds to their latency (measured: one-log append p99 1.7x with a rare-token
search in a loop, at 250 entries and 64 blocks per call; 14x at 1,000 and 256). Redis
freezes time inside a script, so no clock can bound a call."""
_Filters = list[str | bytes | int]


class RedisStreamLogStore:
    """A `LogStore` on a Redis stream (see the module docstring for the layout).

    Args:
        redis: an async client created with `decode_responses=False`. The store does not
            close it unless it was made by `from_url`.
        instance: the name of the Log API instance writing through this store.
        prefix: the key prefix of this deployment.
        options: retention, idempotency and scan tuning.
        index: the search index's shape, or None for no index (then every query scans; the
            blocks already written stay, and are used again when the index is back on).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        instance: str,
        prefix: str = "aygolog",
        options: StoreOptions | None = None,
        index: IndexOptions | None = _NO_INDEX,
    ) -> None:
        self._redis = redis
        self._instance = instance
        self._keys = KeySpace(prefix)
        self._stream = self._keys.key("logs")
        self._stats = self._keys.key("stats")
        self._options = options or StoreOptions()
        retention = self._options.retention
        self._max_entries = retention.max_entries or 0
        self._max_age_ms = int(retention.max_age.total_seconds() * 1000) if retention.max_age else 0
        self._idem_ttl_ms = int(self._options.idempotency_ttl.total_seconds() * 1000)
        self._owns_client = False
        self._index = index
        self._hasher = BloomHasher(index or _NO_INDEX)
        self._index_keys = (
            self._keys.key("ix"),
            self._keys.key("ixb"),
            self._keys.key("ixtmp"),
            self._keys.key("ixl"),
        )
        self._block_prefix = self._keys.key("ix") + ":"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        instance: str,
        prefix: str = "aygolog",
        options: StoreOptions | None = None,
        index: IndexOptions | None = _NO_INDEX,
    ) -> Self:
        """A store with its own client for `url`, closed by `aclose()`."""
        client = create_single_redis(url)
        store = cls(client, instance=instance, prefix=prefix, options=options, index=index)
        store._owns_client = True
        return store

    @property
    def instance(self) -> str:
        """The name of the Log API instance writing through this store."""
        return self._instance

    async def append(self, log: NewLog, *, idempotency_key: str | None = None) -> LogEntry:
        """Store one entry and return it as stored (see `LogStore.append`)."""
        result = await self.append_many((log,), idempotency_key=idempotency_key)
        return stored_entry(log, result.ids[0], result.instance)

    async def append_many(
        self, logs: Sequence[NewLog], *, idempotency_key: str | None = None
    ) -> BatchResult:
        """Store a batch in one EVALSHA, all or nothing (see `LogStore.append_many`)."""
        if not logs:
            return BatchResult(ids=[], instance=self._instance)
        return await self._append(logs, idempotency_key, None)

    async def _append(
        self, logs: Sequence[NewLog], idempotency_key: str | None, at: Sequence[str] | None
    ) -> BatchResult:
        index = self._index
        args: list[bytes | str | int] = [
            self._max_entries,
            self._max_age_ms,
            0,
            self._instance,
            "",
            index.block_entries if index else 0,
            self._block_prefix,
            index.bloom_bytes * 8 if index else 0,
            self._hasher.batch_bits(logs) if index else b"",
            "" if at is None else "x",
        ]
        digits = _DIGITS
        encode = _ENCODE
        entries: list[bytes | str] = []
        if at is None:
            for log in logs:
                entries += (digits[log.level.severity], log.service or "", encode(log))
        else:
            for log, entry_id in zip(logs, at, strict=True):
                entries += (entry_id, digits[log.level.severity], log.service or "", encode(log))
        # the entries, packed by hiredis (C; redis-py packs in Python at ~2 us per entry) into
        # the tail of the command; the idempotency digest is one blake2b over those bytes
        packed_entries = _PACK(tuple(entries))  # type: ignore[arg-type]  # stub: 1-tuple
        idem_key = self._stream  # a placeholder in the same slot when no key is given
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            idem_key = self._keys.key(f"idem:{idempotency_key}")
            args[2] = self._idem_ttl_ms
            args[4] = hashlib.blake2b(packed_entries, digest_size=16).hexdigest()
        rate_key = self._keys.key(f"rate:{int(time.time()) // _BUCKET_SECONDS}")
        keys = (self._stream, self._stats, idem_key, rate_key, *self._index_keys)
        reply = await self._eval_packed(keys, args, len(entries), packed_entries)
        if reply[0] == 1:
            return BatchResult(ids=[i.decode() for i in reply[1:]], instance=self._instance)
        digest, instance, ids = bytes(reply[1]).decode().split("\n", 2)
        if digest != args[4]:
            raise Conflict(
                f"idempotency key {idempotency_key!r} was used for a different batch"
                " in the last 24 hours"
            )
        return BatchResult(ids=ids.split(","), instance=instance, replayed=True)

    async def append_at(self, logs: Sequence[NewLog], ids: Sequence[str]) -> BatchResult:
        """Store a batch under explicit, increasing stream ids (for benchmarks and tests that
        need receive times in the past; the Log API never calls it)."""
        if not logs:
            return BatchResult(ids=[], instance=self._instance)
        return await self._append(logs, None, ids)

    async def query(self, query: LogQuery) -> LogPage:
        """Entries matching `query`, newest first unless asked otherwise (see `LogQuery`).

        Raises:
            ValidationError: a bad limit, cursor, time range or query string.
        """
        check_query(query)
        return await self.search(search_plan(query), query)

    async def search(self, plan: Plan, query: LogQuery) -> LogPage:
        """One page of the entries `plan` selects; `query` gives the page (limit, cursor,
        direction), `plan` the filter and the time range.

        Lua keeps the candidates (severity, service, and for each token clause one of its tokens
        in the lower-cased body), skipping index blocks that cannot hold one; Python checks
        each candidate with `plan.matches`, and asks for more until the page is full.
        """
        filters = self._filters(plan)
        limit, more = page_limit(query, plan)
        bounds = id_bounds(query, plan)
        if filters is None or bounds is None or limit < 1:
            return LogPage(items=[])
        backward = query.direction is Direction.BACKWARD
        low, high = format_stream_id(bounds[0]), format_stream_id(bounds[1])
        start, stop = (high, low) if backward else (low, high)
        options = self._options
        items: list[LogEntry] = []
        calls = scanned = 0
        page_bytes = 0
        exact = plan.predicate is None or (plan.exact and not plan.clauses)
        while True:
            wanted = limit - len(items)
            if not exact:
                # candidates may fail the exact check: ask for more each time it happens
                wanted = min(options.scan_budget, wanted << min(calls, 16))
            reply = await self._scan(
                start, stop, "b" if backward else "f", wanted,
                options.max_page_bytes - page_bytes, "e", 0, filters,
            )  # fmt: skip
            calls += 1
            last, done, scanned = reply[0].decode(), reply[1] == 1, scanned + reply[2]
            body = reply[4:]
            for i in range(0, len(body), 3):
                entry = _entry(body[i].decode(), body[i + 1].decode(), body[i + 2])
                if not exact and not plan.matches(entry):
                    continue
                items.append(entry)
                page_bytes += len(body[i + 2])
                if len(items) >= limit:
                    return LogPage(items=items, next_cursor=entry.id if more else None)
                if page_bytes >= options.max_page_bytes:
                    return LogPage(items=items, next_cursor=entry.id)
            if done:
                return LogPage(items=items)
            if scanned >= options.max_scan or not last:
                return LogPage(items=items, next_cursor=last or None)
            start = "(" + last

    async def count(self, query: LogQuery) -> CountResult:
        """Entries matching `query`, counted per its `| count()` pipe (see `LogStore.count`).

        Raises:
            ValidationError: a query string that does not parse, or too many buckets ("step").
        """
        return await self.count_plan(plan_for(query))

    async def count_plan(self, plan: Plan, *, now: datetime | None = None) -> CountResult:
        """Run a count plan (see `count`; `now` ends a stepped range without an end).

        Entries of whole index blocks are counted from the blocks' counters when the plan
        filters by level and service at most (`Plan.exact`) and groups only by level, service
        or instance; the rest is scanned,
        at most `StoreOptions.max_scan` entries (past it the result says `complete=False`).
        """
        frame = count_frame(plan, now=now or datetime.now(UTC))
        tally = Tally(frame)
        filters = self._filters(plan)
        if frame.bounds is None or filters is None:
            return tally.result()
        by = frame.spec.by
        # counters hold (minute, level, service, instance): they serve a plan whose filter is
        # exactly its severities and services (Lua filters the counters by those)
        by_counters = (plan.predicate is None or plan.exact) and set(by) <= _COUNTER_FIELDS
        by_level = set(by) <= {"level"} and plan.services is None
        mode = ("v" if by_level else "c") if by_counters else "e"
        start, stop = (format_stream_id(b) for b in frame.bounds)
        step_ms = frame.step_ms or 0
        options = self._options
        scanned = 0
        counted: dict[tuple[str, ...], list[int]] = {}
        while True:
            reply = await self._scan(
                start, stop, "f", options.scan_budget, options.max_page_bytes,
                mode, step_ms, filters,
            )  # fmt: skip
            last, done, scanned = reply[0].decode(), reply[1] == 1, scanned + reply[2]
            body = reply[4:]
            if by_counters:
                for i in range(0, len(body), 2):
                    bucket, level, service, instance = body[i].decode().split("\n")
                    labels = _counter_labels(by, level, service, instance)
                    series = counted.get(labels)
                    if series is None:
                        series = counted[labels] = [0] * frame.buckets
                    series[frame.bucket(int(bucket)) if step_ms else 0] += int(body[i + 1])
            else:
                for i in range(0, len(body), 3):
                    entry = _entry(body[i].decode(), body[i + 1].decode(), body[i + 2])
                    if plan.matches(entry):
                        tally.add(entry, id_ms(entry.id))
            if done:
                break
            if scanned >= options.max_scan or not last:
                tally.complete = False
                break
            start = "(" + last
        for labels, series in counted.items():
            tally.add_counts(labels, series)
        return tally.result()

    async def version(self) -> str:
        """The stream's newest id, length and a digest of its newest entry, in one EVALSHA
        (`lua/version.lua`; see `LogStore.version`)."""
        reply = await self._eval("version", _SHA_VERSION, _VERSION, (self._stream,), ())
        return bytes(reply).decode()

    async def tail(self, after_id: str = "$") -> AsyncIterator[LogEntry]:
        """New entries after `after_id` as they arrive ("$": from now; "0": from the start).

        Raises:
            Unavailable: Redis cannot be reached (the iterator ends; resume from the last id).
        """
        last = after_id
        if last != "$":
            last = format_stream_id(parse_stream_id(after_id, "after_id"))
        else:
            newest = await self._call(
                "tail", self._redis.xrevrange(self._stream, "+", "-", count=1)
            )
            last = newest[0][0].decode() if newest else "0-0"
        # A connection of its own for the blocking reads, used without redis-py's reply
        # callback (which builds a dict per entry): the raw reply is {stream: entries} (RESP3)
        # or [[stream, entries]] (RESP2), entries being [[id, [b"l", v, b"s", v, b"i", v,
        # b"d", v]], ...].
        pool = self._redis.connection_pool
        connection = await self._call("tail", pool.get_connection())  # type: ignore[no-untyped-call]
        try:
            while True:
                try:
                    await connection.send_command(
                        "XREAD", "COUNT", 1000, "BLOCK", _BLOCK_MS, "STREAMS", self._stream, last
                    )
                    reply = await connection.read_response()
                except RedisError as exc:
                    await connection.disconnect()
                    raise unavailable(exc, "tail") from exc
                except BaseException:
                    # Cancelled mid-read: the reply would arrive later on a reused connection.
                    await connection.disconnect()
                    raise
                if not reply:
                    continue
                entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
                for raw_id, fields in entries:
                    last = raw_id.decode()
                    yield _entry(last, fields[5].decode(), fields[7])
        finally:
            await pool.release(connection)

    async def stats(self) -> LogStats:
        """Ingest counters, and how many entries the stream holds now."""
        now = time.time()
        bucket = int(now) // _BUCKET_SECONDS
        buckets = [self._keys.key(f"rate:{b}") for b in range(bucket - 6, bucket + 1)]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._stats)
            pipe.xlen(self._stream)
            pipe.mget(buckets)
            counters, retained, recent = await self._call("stats", pipe.execute())
        window = 6 * _BUCKET_SECONDS + (now - bucket * _BUCKET_SECONDS)
        rate = sum(int(v) for v in recent if v is not None) / window
        by_level: dict[str, int] = {}
        by_service: dict[str, int] = {}
        by_instance: dict[str, int] = {}
        total = 0
        for raw_key, raw_value in counters.items():
            key, value = raw_key.decode(), int(raw_value)
            kind, _, name = key.partition(":")
            if kind == "total":
                total = value
            elif kind == "l":
                by_level[LogLevel.from_severity(int(name)).value] = value
            elif kind == "s":
                by_service[name] = value
            elif kind == "i":
                by_instance[name] = value
        return LogStats(
            total=total,
            retained=int(retained),
            by_level=by_level,
            by_service=by_service,
            by_instance=by_instance,
            ingest_rate=round(rate, 3),
        )

    async def ping(self) -> None:
        """Return when Redis answers; raise `Unavailable` when it does not."""
        await self._call("ping", self._redis.ping())

    async def aclose(self) -> None:
        """Close the client if this store made it."""
        if self._owns_client:
            await self._redis.aclose()

    def _filters(self, plan: Plan) -> _Filters | None:
        """The Lua scan's filter arguments (ARGV[8..9], [12..]) for `plan`; None when nothing
        can match."""
        if plan.empty:
            return None
        levels = services = ""
        if plan.severities is not None:
            levels = "".join(sorted(str(s) for s in plan.severities))
            if not levels:
                return None
        if plan.services is not None:
            if not plan.services:
                return None
            services = "\n" + "\n".join(sorted(plan.services)) + "\n"
        index = self._index
        filters: _Filters = [
            levels,
            services,
            index.block_budget if index else 0,
            self._block_prefix,
            index.bloom_bytes * 8 if index else 0,
        ]
        for clause in plan.clauses:
            if not clause:
                return None
            words = "\n".join(sorted(t for t in clause if t.isascii()))
            filters += (words, self._hasher.probes(clause) if index else b"")
        return filters

    async def _scan(
        self,
        start: str,
        stop: str,
        direction: str,
        wanted: int,
        max_bytes: int,
        mode: str,
        step_ms: int,
        filters: _Filters,
    ) -> Any:
        options = self._options
        budget = min(options.scan_budget, _CALL_ENTRIES)
        args = [start, stop, direction, wanted, budget, options.scan_chunk, max_bytes,
                filters[0], filters[1], mode, step_ms, *filters[2:5], 0, *filters[5:]]  # fmt: skip
        keys = (self._stream, self._index_keys[1], self._index_keys[3])
        return await self._eval("query", _SHA_SCAN, _SCAN, keys, args)

    async def _eval(
        self, op: str, sha: str, script: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        try:
            try:
                return await self._redis.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                return await self._redis.eval(script, len(keys), *keys, *args)
        except RedisError as exc:
            raise unavailable(exc, op) from exc

    async def _eval_packed(
        self, keys: Sequence[str], args: Sequence[Any], count: int, packed_tail: bytes
    ) -> Any:
        """`lua/append.lua` with `args` then the `count` arguments packed in `packed_tail`,
        sent as bytes on a pooled connection (EVAL when the script is not loaded)."""
        pool = self._redis.connection_pool
        connection = await self._call("append", pool.get_connection())  # type: ignore[no-untyped-call]
        try:
            reply = await self._send_packed(connection, _SHA_APPEND, keys, args, count, packed_tail)
            if isinstance(reply, NoScriptError):
                reply = await self._send_packed(connection, _APPEND, keys, args, count, packed_tail)
            if isinstance(reply, RedisError):
                raise reply
            return reply
        except RedisError as exc:
            raise unavailable(exc, "append") from exc
        finally:
            await pool.release(connection)

    @staticmethod
    async def _send_packed(
        connection: Any,
        script: str,
        keys: Sequence[str],
        args: Sequence[Any],
        count: int,
        packed_tail: bytes,
    ) -> Any:
        """One EVALSHA (a 40-character sha) or EVAL; an error reply is returned, not raised.
        Retried like redis-py's own commands (connection errors, per the client's `Retry`)."""
        head = _PACK(("EVALSHA" if len(script) == 40 else "EVAL", script, len(keys), *keys, *args))
        # two packed arrays -> one: the header counts both, each loses its own header
        header = b"*%d\r\n" % (len(keys) + len(args) + 3 + count)
        command = b"".join(
            (header, head[head.index(b"\n") + 1 :], packed_tail[packed_tail.index(b"\n") + 1 :])
        )

        async def send() -> Any:
            try:
                await connection.send_packed_command(command)
                return await connection.read_response(disable_decoding=True)
            except ResponseError:
                raise  # an error reply: the connection is clean
            except BaseException:
                # the reply may be unread (cancelled, or the connection broke): a connection
                # in that state must not go back to the pool as it is
                await connection.disconnect()
                raise

        async def failed(_: BaseException) -> None:
            await connection.disconnect()

        try:
            return await connection.retry.call_with_retry(send, failed)
        except NoScriptError as exc:
            return exc
        except RedisError as exc:
            if isinstance(exc, ResponseError):
                return exc
            raise

    async def _call(self, op: str, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise unavailable(exc, op) from exc


def _counter_labels(
    by: tuple[str, ...], level: str, service: str, instance: str
) -> tuple[str, ...]:
    named = {"level": _LEVEL_NAMES[int(level)], "service": service, "instance": instance}
    return tuple(named[field] for field in by)


def _entry(entry_id: str, instance: str, body: bytes) -> LogEntry:
    return stored_entry(_DECODE_BODY(body), entry_id, instance)
