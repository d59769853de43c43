"""The web page's pure logic: URL filter state, attribute parsing, table rows, buffers, series.

Nothing here touches NiceGUI or the network, so all of it is tested without a browser.
The URL state uses the API's own query parameters (`aygolog.querystring`): `query` (the search
box: the query language, docs/query.md), `level`, `service`, `since`, `until`; a link to the
page with `?query=timeout&level=error&since=1h` shows what `GET /api/logs` returns for the same
parameters. (An older link's `q=`, a substring of the message, still works: see `from_params`.)
"""

from __future__ import annotations

import functools
import math
import re
import shlex
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

from msgspec.structs import replace as replace_struct

from aygolog.errors import ValidationError
from aygolog.models import AttributeValue, InstanceView, LogEntry, LogLevel, LogQuery
from aygolog.query import Plan, QuerySyntaxError, parse, plan_for
from aygolog.querystring import parse_time

__all__ = [
    "LEVEL_COLORS",
    "RANGES",
    "STATUS_COLORS",
    "Filters",
    "IngestSeries",
    "RowBuffer",
    "describe_error",
    "format_age",
    "format_row",
    "newer_than",
    "parse_attributes",
    "service_rows",
    "to_log_query",
    "truncate",
]

RANGES: Final[dict[str, str]] = {
    "": "any time",
    "5m": "last 5 m",
    "15m": "last 15 m",
    "1h": "last 1 h",
    "24h": "last 24 h",
    "custom": "custom",
}
"""The time-range choices of the filter row: a relative `since`, or a custom since/until."""

LEVEL_COLORS: Final[dict[str, str]] = {
    "trace": "grey-6",
    "debug": "blue-grey-5",
    "info": "primary",
    "warning": "orange-8",
    "error": "negative",
    "critical": "purple-9",
}
"""Quasar colour of each level's chip."""

STATUS_COLORS: Final[dict[str, str]] = {
    "healthy": "positive",
    "draining": "warning",
    "ejected": "negative",
    "unhealthy": "deep-orange-8",
    "expired": "grey-7",
}

MESSAGE_PREVIEW: Final = 120
"""Characters of a message shown in the table; the expanded row shows all of it."""


# -- URL state --------------------------------------------------------------------------------


def _split(values: Iterable[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@dataclass(frozen=True, slots=True)
class Filters:
    """What the table shows; encoded in the page's URL so that a link can be shared."""

    levels: frozenset[LogLevel] = frozenset()
    service: str = ""
    text: str = ""
    """The search box: a query in the query language (docs/query.md)."""
    range: str = ""
    """A key of `RANGES`: a relative time (`15m`), `custom`, or "" for any time."""
    since: str = ""
    """With `range == "custom"`: the start, RFC 3339 (or anything `parse_time` takes)."""
    until: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, str | Sequence[str]]) -> Filters:
        """Filters from URL query parameters; what cannot be understood is left out."""

        def values(name: str) -> list[str]:
            raw = params.get(name)
            if raw is None:
                return []
            return [raw] if isinstance(raw, str) else list(raw)

        levels: set[LogLevel] = set()
        for name in _split(values("level")):
            try:
                levels.add(LogLevel.parse(name))
            except ValueError:
                continue
        since = (values("since") or [""])[-1].strip()
        until = (values("until") or [""])[-1].strip()
        since, until = _valid_time(since), _valid_time(until)
        if since in RANGES and since not in ("", "custom") and not until:
            span, since = since, ""
        elif since or until:
            span = "custom"
        else:
            span = ""
        return cls(
            levels=frozenset(levels),
            service=",".join(_split(values("service"))),
            text=(values("query") or [_substring(q) for q in values("q")] or [""])[-1],
            range=span,
            since=since,
            until=until,
        )

    def to_params(self) -> list[tuple[str, str]]:
        """The URL query parameters of these filters (the API's names)."""
        params: list[tuple[str, str]] = []
        if self.levels:
            ordered = sorted(self.levels, key=lambda lv: lv.severity)
            params.append(("level", ",".join(lv.value for lv in ordered)))
        if self.service.strip():
            params.append(("service", ",".join(_split([self.service]))))
        if self.text.strip():
            params.append(("query", self.text))
        if self.range == "custom":
            if self.since:
                params.append(("since", self.since))
            if self.until:
                params.append(("until", self.until))
        elif self.range:
            params.append(("since", self.range))
        return params

    def to_url(self, path: str = "/") -> str:
        """The page's URL with these filters."""
        params = self.to_params()
        return f"{path}?{urlencode(params)}" if params else path

    @property
    def query(self) -> str | None:
        """The search box's query string for the SDK (None when blank)."""
        return self.text if self.text.strip() else None

    def query_filters(self, *, now: datetime | None = None) -> dict[str, Any]:
        """Keyword filters for `AsyncLogClient.query` beside `query` (relative times resolved
        against `now`)."""
        kwargs: dict[str, Any] = self.tail_filters()
        since, until = self.bounds(now=now)
        if since is not None:
            kwargs["since"] = since
        if until is not None:
            kwargs["until"] = until
        return kwargs

    def tail_filters(self) -> dict[str, Any]:
        """Keyword filters for `AsyncLogClient.tail` beside `query` (the time range does not
        apply to a tail)."""
        kwargs: dict[str, Any] = {}
        if self.levels:
            kwargs["level"] = sorted(self.levels, key=lambda lv: lv.severity)
        services = _split([self.service])
        if services:
            kwargs["service"] = services
        return kwargs

    def plan(self) -> Plan:
        """The plan of the search box and the level and service filters (not the range).

        Raises:
            QuerySyntaxError: the search box does not parse.
        """
        return _plan(self.query, self.levels, tuple(_split([self.service])))

    def bounds(self, *, now: datetime | None = None) -> tuple[datetime | None, datetime | None]:
        """The time range as datetimes (None: unbounded)."""
        now = now or datetime.now(UTC)
        if self.range == "custom":
            since = parse_time(self.since, now=now) if self.since else None
            until = parse_time(self.until, now=now) if self.until else None
            return since, until
        if self.range:
            return parse_time(self.range, now=now), None
        return None, None

    def query_problem(self) -> str | None:
        """Why the search box cannot be run (it does not parse, or asks for counts), or None."""
        try:
            plan = self.plan()
        except QuerySyntaxError as exc:
            return exc.errors[0].reason
        if plan.count is not None:
            return "the table lists entries; a `| count()` query is asked of the API"
        return None

    def problem(self) -> str | None:
        """Why these filters cannot be run (a query that does not parse, or asks for counts;
        a custom time that is not a time), or None."""
        problem = self.query_problem()
        if problem is not None:
            return f"query: {problem}"
        if self.range == "custom":
            for name, value in (("since", self.since), ("until", self.until)):
                if value and not _valid_time(value):
                    return f"{name}: {value[:40]!r} is not a time; use RFC 3339 or e.g. 2h, 7d"
        elif self.range and self.range not in RANGES:
            return f"unknown time range {self.range[:20]!r}"
        return None

    @property
    def live_applies(self) -> bool:
        """Whether new entries can be followed: not with a custom range that ends in the past,
        nor with a query a live tail refuses (a `_time` range, a `| limit`)."""
        if self.range == "custom" and self.until:
            return False
        try:
            plan = self.plan()
        except QuerySyntaxError:
            return False
        return plan.since is None and plan.until is None and plan.limit is None

    def matches(self, entry: LogEntry, *, now: datetime | None = None) -> bool:
        """Whether `entry` passes these filters (the Log API's rules: the query's plan)."""
        try:
            if not self.plan().matches(entry):
                return False
        except QuerySyntaxError:
            return False
        since, until = self.bounds(now=now)
        received = entry.received_at
        if since is not None and received < since:
            return False
        return until is None or received <= until

    def with_changes(self, **changes: Any) -> Filters:
        """A copy with some fields changed."""
        return replace(self, **changes)


@functools.lru_cache(maxsize=16)
def _plan(query: str | None, levels: frozenset[LogLevel], services: tuple[str, ...]) -> Plan:
    # Cached: the live tail asks for it for every entry, with the same few filters.
    asked = LogQuery(query=query, levels=levels or None, services=frozenset(services) or None)
    try:
        return plan_for(asked)
    except OverflowError:  # the parser lets `_time:999999999999d` through this way
        raise QuerySyntaxError(0, "numbers small enough to compute with", "one too large") from None
    except QuerySyntaxError:
        if query is None:
            raise
        parsed = parse(query)  # the real syntax error, if there is one
    # It parses but cannot be planned in this process: a regex, and RE2 is not installed with
    # the `ui` extra alone. The Log API runs it (its table and tail answers are filtered
    # already); here the level and service filters and the pipes still apply.
    plan = plan_for(replace_struct(asked, query=None))
    return replace(plan, limit=parsed.limit, count=parsed.count)


_REGEX_SPECIAL: Final = re.compile(r"([\\.^$|?*+()\[\]{}])")


def _substring(text: str) -> str:
    """An older link's `q=` (a case-insensitive substring of the message) as a query: a
    regex of the text taken literally, in a quoted string (where `\\` and `\"` escape)."""
    if not text.strip():
        return ""
    regex = _REGEX_SPECIAL.sub(r"\\\1", text)
    return '~"' + regex.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _valid_time(value: str) -> str:
    if not value:
        return ""
    try:
        parse_time(value)
    except (ValueError, OverflowError):  # OverflowError: a time too far back or ahead
        return ""
    return value


def to_log_query(filters: Filters, *, limit: int = 100, now: datetime | None = None) -> LogQuery:
    """The `LogQuery` the table runs for `filters` (for tests and for showing the API link)."""
    since, until = filters.bounds(now=now)
    services = _split([filters.service])
    return LogQuery(
        query=filters.query,
        levels=filters.levels or None,
        services=frozenset(services) or None,
        since=since,
        until=until,
        limit=limit,
    )


# -- the create form ----------------------------------------------------------------------------

_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _coerce(value: str) -> AttributeValue:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if re.fullmatch(r"-?\d{1,18}", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.\d+(?:[eE][-+]?\d+)?", value):
        number = float(value)
        if math.isfinite(number):
            return number
    return value


def parse_attributes(text: str) -> dict[str, AttributeValue]:
    """`key=value` pairs separated by spaces, commas or new lines; quote values with spaces.

    `order=42 paid=true region="eu west"` gives `{"order": 42, "paid": True, "region": "eu west"}`:
    whole numbers become ints, decimals floats, true/false booleans, the rest stays text.

    Raises:
        ValueError: a pair without `=`, an empty or badly formed key, or unbalanced quotes.
    """
    try:
        parts = shlex.split(text.replace(",", " "), posix=True)
    except ValueError as exc:
        raise ValueError(f"attributes: {exc}") from None
    out: dict[str, AttributeValue] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"attributes: expected key=value, got {part[:40]!r}")
        if not _KEY.fullmatch(key):
            raise ValueError(f"attributes: {key[:40]!r} is not a valid key")
        out[key] = _coerce(value.strip())
    return out


def describe_error(exc: Exception) -> str:
    """An API error for a notification: the server's message and each field it named."""
    text = str(exc)
    if isinstance(exc, ValidationError) and exc.errors:
        details = "; ".join(error.describe() for error in exc.errors[:5])
        if details not in text:
            text = f"{text} ({details})"
    return text


# -- table rows ---------------------------------------------------------------------------------


def truncate(text: str, limit: int = MESSAGE_PREVIEW) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def format_row(entry: LogEntry) -> dict[str, Any]:
    """One table row: plain strings only, rendered as text by the table (never as HTML).

    The row carries the message's one-line preview only; when that is not the whole message,
    `truncated` is set and `full_message` stays empty until the row is expanded
    (`RowBuffer.expand`), so that a table of long messages stays light to send.
    """
    stamp = entry.timestamp.astimezone(UTC)
    preview = truncate(entry.message)
    return {
        "id": entry.id,
        "time": stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}",
        "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": entry.level.value,
        "color": LEVEL_COLORS[entry.level.value],
        "service": entry.service or "",
        "message": preview,
        "truncated": preview != entry.message,
        "full_message": "",
        "instance": entry.instance,
        "attributes": [f"{key}={value}" for key, value in sorted(entry.attributes.items())],
        "trace_id": entry.trace_id or "",
    }


@dataclass(slots=True)
class RowBuffer:
    """The rows of the table, newest first, at most `cap`, each entry once.

    `cursor` is where "load older" continues: the id of the oldest row kept (a query cursor
    is an entry id, exclusive), or None when nothing older matches. The whole text of each
    truncated message is kept here, for `expand`.

    Pages of older entries that the user asked for are never trimmed away: they let the buffer
    grow beyond `cap` (up to the new size; newer rows then push the oldest out from there), so
    that "load older" keeps going back. `replace_all` goes back to `cap`.
    """

    cap: int = 500
    rows: list[dict[str, Any]] = field(default_factory=list)
    cursor: str | None = None
    _by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    _full: dict[str, str] = field(default_factory=dict)
    _limit: int = 0
    """The current size limit: `cap`, or more once older pages were loaded."""

    @property
    def newest_id(self) -> str | None:
        """The id of the top row, or None when the buffer is empty."""
        return self.rows[0]["id"] if self.rows else None

    def replace_all(self, entries: Sequence[LogEntry], next_cursor: str | None) -> None:
        """Start over with one page of a query (newest first)."""
        self.rows = []
        self._by_id = {}
        self._full = {}
        self.cursor = next_cursor
        self.append_older(entries, next_cursor)
        self._limit = self.cap
        self._trim()

    def _row(self, entry: LogEntry) -> dict[str, Any]:
        row = format_row(entry)
        self._by_id[entry.id] = row
        if row["truncated"]:
            self._full[entry.id] = entry.message
        return row

    def add_newer(self, entries: Iterable[LogEntry]) -> int:
        """Put entries at the top (the stream's order: oldest first); return how many were new."""
        fresh = [self._row(e) for e in entries if e.id not in self._by_id]
        if not fresh:
            return 0
        fresh.sort(key=lambda row: _id_key(row["id"]), reverse=True)
        in_order = not self.rows or _id_key(fresh[-1]["id"]) > _id_key(self.rows[0]["id"])
        self.rows = fresh + self.rows
        if not in_order:  # rare: an entry older than the top one (e.g. sent while loading)
            self.rows.sort(key=lambda row: _id_key(row["id"]), reverse=True)
        self._trim()
        return len(fresh)

    def append_older(self, entries: Sequence[LogEntry], next_cursor: str | None) -> int:
        """Add a page of older entries at the bottom; return how many were new."""
        added = 0
        for entry in entries:
            if entry.id in self._by_id:
                continue
            self.rows.append(self._row(entry))
            added += 1
        self.cursor = next_cursor
        # what the user paged back to stays: the limit grows with it
        self._limit = max(self._limit, self.cap, len(self.rows))
        return added

    def expand(self, entry_id: str) -> bool:
        """Put the whole message into a truncated row; True when the row changed."""
        row = self._by_id.get(entry_id)
        full = self._full.get(entry_id)
        if row is None or full is None or row["full_message"] == full:
            return False
        row["full_message"] = full
        return True

    def _trim(self) -> None:
        limit = max(self._limit, self.cap)
        if len(self.rows) <= limit:
            return
        dropped = self.rows[limit:]
        self.rows = self.rows[:limit]
        for row in dropped:
            self._by_id.pop(row["id"], None)
            self._full.pop(row["id"], None)
        # older ones can be loaded again from the oldest kept row on
        self.cursor = self.rows[-1]["id"]

    def __len__(self) -> int:
        return len(self.rows)


def newer_than(entries: Iterable[LogEntry], entry_id: str | None) -> list[LogEntry]:
    """The entries whose id comes after `entry_id` (all of them when it is None), each once."""
    floor = _id_key(entry_id) if entry_id is not None else None
    seen: set[str] = set()
    out: list[LogEntry] = []
    for entry in entries:
        if entry.id in seen or (floor is not None and _id_key(entry.id) <= floor):
            continue
        seen.add(entry.id)
        out.append(entry)
    return out


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


# -- services and stats -------------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    """A heartbeat age for people: `0.8 s`, `42 s`, `3 m 5 s`, or `-`."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 120:
        return f"{minutes} m {rest} s"
    return f"{minutes // 60} h {minutes % 60} m"


def service_rows(
    services: Sequence[InstanceView], *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Rows of the services panel from what `AsyncLogClient.services()` returns, by name."""
    now = now or datetime.now(UTC)
    rows = []
    for view in sorted(services, key=lambda v: v.name):
        age = view.heartbeat_age
        if age is None and view.last_heartbeat is not None:
            age = (now - view.last_heartbeat).total_seconds()
        status = str(view.status)
        rows.append(
            {
                "name": view.name,
                "url": view.url,
                "status": status,
                "color": STATUS_COLORS.get(status, "grey-7"),
                "heartbeat": format_age(age),
                "in_flight": view.in_flight if view.in_flight is not None else 0,
                "served": view.served if view.served is not None else 0,
            }
        )
    return rows


@dataclass(slots=True)
class IngestSeries:
    """Logs per second over the last `window` seconds, from samples of the stored total."""

    window: float = 300.0
    points: deque[tuple[float, float]] = field(default_factory=deque)
    """(unix time, logs/s) pairs, oldest first."""
    _last: tuple[float, int] | None = None

    def add(self, at: float, total: int, first_rate: float | None = None) -> float | None:
        """Note the total stored at time `at`; return the rate since the last sample, if any.

        `first_rate` (the server's recent rate) is the point to show when there is no earlier
        sample to compare with.
        """
        rate: float | None = None
        if self._last is None:
            if first_rate is not None:
                self.points.append((at, first_rate))
        else:
            then, before = self._last
            if at > then and total >= before:
                rate = (total - before) / (at - then)
                self.points.append((at, rate))
        self._last = (at, total)
        while self.points and self.points[0][0] < at - self.window:
            self.points.popleft()
        return rate

    def reset(self) -> None:
        """Forget the last sample (after an outage the next delta would mislead)."""
        self._last = None

    def chart_data(self) -> list[list[Any]]:
        """`[[time in ms, rate], ...]` for an echart time axis."""
        return [[int(at * 1000), round(rate, 2)] for at, rate in self.points]
