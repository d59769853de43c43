"""The client commands of `aygolog`: `send`, `tail`, `query`, `services` (built on `LogClient`).

Every command takes `--url` (default `$AYGOLOG_URL`, else http://127.0.0.1:8080). Failures are
one line on stderr, never a traceback: exit 1 for a user error (bad arguments, input the server
refused), 2 when the server is unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import IO, Any, Final

import httpx
import msgspec

from aygolog.client import LogClient, ServiceView
from aygolog.client._base import build_log, to_new_log
from aygolog.errors import (
    AuthError,
    AygologError,
    NotFound,
    RateLimited,
    Unavailable,
    ValidationError,
)
from aygolog.models import (
    CountResult,
    FieldError,
    LogEntry,
    LogLevel,
    LogPage,
    NewLog,
)
from aygolog.query import parse

__all__ = ["DEFAULT_URL", "add_client_commands", "count_table", "format_entry", "use_colour"]

EXIT_OK: Final = 0
EXIT_USER_ERROR: Final = 1
EXIT_UNAVAILABLE: Final = 2
EXIT_INTERRUPTED: Final = 130
DEFAULT_URL: Final = "http://127.0.0.1:8080"

_LEVEL_COLOURS: Final = {
    LogLevel.TRACE: "2",
    LogLevel.DEBUG: "36",
    LogLevel.INFO: "32",
    LogLevel.WARNING: "33",
    LogLevel.ERROR: "31",
    LogLevel.CRITICAL: "1;41;97",
}
_DIM: Final = "2"
_RESET: Final = "\033[0m"


class UserError(Exception):
    """A mistake in the command line or the input: exit 1 with this message."""


# -- output helpers ----------------------------------------------------------------------------


def use_colour(stream: IO[str], choice: str = "auto") -> bool:
    """Whether to colour `stream`: `always`, `never`, or (auto) a terminal without NO_COLOR."""
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR"):
        return False
    return stream.isatty()


def _paint(text: str, code: str, colour: bool) -> str:
    return f"\033[{code}m{text}{_RESET}" if colour and code else text


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _attrs(entry: LogEntry) -> str:
    return " ".join(f"{k}={v}" for k, v in entry.attributes.items())


def format_entry(entry: LogEntry, *, colour: bool = False) -> str:
    """One entry as a line of `aygolog tail`: time, level, service, instance, message, attrs."""
    level = _paint(f"{entry.level.value.upper():<8}", _LEVEL_COLOURS[entry.level], colour)
    where = f"{entry.service or '-'} {entry.instance}"
    line = f"{_paint(_time(entry.timestamp), _DIM, colour)} {level} {where}: {entry.message}"
    attrs = _attrs(entry)
    return f"{line} {_paint(attrs, _DIM, colour)}" if attrs else line


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    paint: Callable[[int, str, str], str] | None = None,
) -> list[str]:
    """Aligned columns (the last one is not padded); `paint(column, cell, padded)` colours."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = []
    for index, row in enumerate([headers, *rows]):
        cells = []
        for col, cell in enumerate(row):
            padded = cell if col == len(row) - 1 else cell.ljust(widths[col])
            if paint is not None and index > 0:
                padded = paint(col, cell, padded)
            cells.append(padded)
        lines.append("  ".join(cells).rstrip())
    return lines


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


# -- arguments shared by several commands ------------------------------------------------------


def _url_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"the load balancer or a Log API instance (default $AYGOLOG_URL, else {DEFAULT_URL})",
    )
    parent.add_argument(
        "--api-key",
        default=argparse.SUPPRESS,
        help="an API key, when the load balancer requires one (default $AYGOLOG_API_KEY)",
    )
    return parent


def _filters_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("filters (all must match)")
    group.add_argument(
        "-l", "--level", action="append", help="these levels (repeat, or comma-separated)"
    )
    group.add_argument("-m", "--min-level", help="this level or more severe")
    group.add_argument(
        "-s", "--service", action="append", help="these services (repeat, or comma-separated)"
    )
    group.add_argument("-q", "--text", "--grep", dest="text", help="text in the message")
    group.add_argument(
        "-a", "--attr", action="append", default=[], metavar="KEY:VALUE",
        help="attribute equality (repeat); KEY=VALUE works too",
    )  # fmt: skip
    return parent


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in values:
        sep = min((i for i in (pair.find("="), pair.find(":")) if i > 0), default=-1)
        if sep <= 0:
            raise UserError(f"{what}: expected KEY=VALUE, got {pair!r}")
        out[pair[:sep]] = pair[sep + 1 :]
    return out


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if args.level:
        filters["level"] = ",".join(args.level)
    if args.min_level:
        filters["min_level"] = args.min_level
    if args.service:
        filters["service"] = [s.strip() for v in args.service for s in v.split(",") if s.strip()]
    if args.text:
        filters["text"] = args.text
    if args.attr:
        filters["attributes"] = _pairs(args.attr, "--attr")
    return filters


def _client(args: argparse.Namespace, **options: Any) -> LogClient:
    url = getattr(args, "url", None) or os.environ.get("AYGOLOG_URL") or DEFAULT_URL
    api_key = getattr(args, "api_key", None) or os.environ.get("AYGOLOG_API_KEY") or None
    try:
        return LogClient(url, api_key=api_key, **options)
    except (ValueError, httpx.InvalidURL) as exc:
        raise UserError(f"--url: {exc}") from exc


# -- send --------------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on stderr, drawn only for big inputs on a terminal."""

    def __init__(self, total_bytes: int | None, *, enabled: bool, after: int = 2000) -> None:
        self.total = total_bytes
        self.enabled = enabled
        self.after = after
        self.started = time.monotonic()
        self.drawn = False

    def update(self, sent: int, read_bytes: int) -> None:
        if not self.enabled or sent < self.after:
            return
        rate = sent / max(time.monotonic() - self.started, 1e-6)
        text = f"{sent:,} entries sent, {rate:,.0f}/s"
        if self.total:
            done = min(1.0, read_bytes / self.total)
            bar = "#" * int(done * 30)
            text = f"[{bar:<30}] {done:4.0%}  {text}"
        sys.stderr.write(f"\r{text}\033[K")
        sys.stderr.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _stdin_size() -> int | None:
    try:
        st = os.fstat(sys.stdin.fileno())
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) and st.st_size > 0 else None


def _lines(stream: IO[bytes], counter: list[int]) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(stream, start=1):
        counter[0] += len(raw)
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if text.strip():
            yield number, text


def _to_log(args: argparse.Namespace, attrs: dict[str, str], number: int, text: str) -> NewLog:
    try:
        if not args.ndjson:
            return build_log(text, level=args.level, service=args.service, attributes=attrs)
        try:
            item = json.loads(text)
        except ValueError as exc:
            raise UserError(f"line {number}: not JSON ({exc})") from exc
        if not isinstance(item, dict):
            raise UserError(f"line {number}: expected a JSON object")
        item.setdefault("level", args.level)
        if attrs and isinstance(item.get("attributes") or {}, dict):
            item["attributes"] = {**attrs, **(item.get("attributes") or {})}
        return to_new_log(item, service=args.service)
    except ValidationError as exc:
        raise UserError(f"line {number}: {_field_errors(exc.errors)}") from exc


def _send(args: argparse.Namespace) -> int:
    attrs = _pairs(args.attr, "--attr")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    try:
        LogLevel.parse(args.level)
    except ValueError as exc:
        raise UserError(f"--level: {exc}") from exc
    with _client(args) as client:
        if args.message not in (None, "-"):
            entry = client.log(args.message, args.level, args.service, attributes=attrs)
            print(entry.id)
            return EXIT_OK
        if sys.stdin.isatty():
            print("reading logs from stdin, one per line (Ctrl-D ends)", file=sys.stderr)
        counter = [0]
        progress = _Progress(_stdin_size(), enabled=sys.stderr.isatty())
        sent = batches = 0
        chunk: list[NewLog] = []
        numbers: list[int] = []

        def flush() -> None:
            nonlocal sent, batches
            try:
                results = client.log_many(chunk)
            except ValidationError as exc:
                parts = []
                for e in exc.errors:  # the server counts items in the batch; we count lines
                    known = e.index is not None and 0 <= e.index < len(numbers)
                    line = f"line {numbers[e.index]}: " if known and e.index is not None else ""
                    parts.append(f"{line}{e.field}: {e.reason}")
                stored = f" ({sent:,} earlier entries were stored)" if sent else ""
                raise UserError("; ".join(parts) + stored) from exc
            sent += sum(r.count for r in results)
            batches += len(results)
            chunk.clear()
            numbers.clear()
            progress.update(sent, counter[0])

        try:
            for number, text in _lines(sys.stdin.buffer, counter):
                chunk.append(_to_log(args, attrs, number, text))
                numbers.append(number)
                if len(chunk) >= args.batch_size:
                    flush()
            if chunk:
                flush()
        finally:
            progress.finish()
        print(f"sent {sent} entries in {batches} batch(es)")
    return EXIT_OK


# -- query -------------------------------------------------------------------------------------


def _is_count(text: str | None) -> bool:
    """Whether the query string ends in `| count()` (parsed here to pick the endpoint; a
    syntax error is reported here too, with its position). Only parsed, not planned: a regex
    needs RE2, which the SDK-only install lacks; the server runs it."""
    try:
        return bool(text and text.strip()) and parse(text or "").count is not None
    except OverflowError as exc:  # the parser lets `_time:999999999999d` through this way
        raise UserError("query: a number in it is too large") from exc


def _query(args: argparse.Namespace) -> int:
    filters = _filters(args)
    for name in ("since", "until", "cursor"):
        if getattr(args, name):
            filters[name] = getattr(args, name)
    if args.forward:
        filters["direction"] = "forward"
    if not 1 <= args.limit <= 1000:
        raise UserError("--limit must be between 1 and 1000")
    text: str | None = args.query
    if _is_count(text):
        return _count(args, text, filters)
    with _client(args) as client:
        if args.all:
            items: Iterator[LogEntry] = client.iter_logs(text, limit=args.limit, **filters)
            next_cursor = None
            if args.format == "ndjson":
                for entry in items:
                    _print_json(entry)
                return EXIT_OK
            entries = list(items)
        else:
            page = client.query(text, limit=args.limit, **filters)
            entries, next_cursor = page.items, page.next_cursor
    if args.format == "json":
        _print_json(LogPage(items=entries, next_cursor=next_cursor))
    elif args.format == "ndjson":
        for entry in entries:
            _print_json(entry)
    else:
        _print_table(entries, use_colour(sys.stdout, args.color))
        if next_cursor is not None:
            print(
                f"(more: --cursor {next_cursor}, or --all; {len(entries)} shown)", file=sys.stderr
            )
    return EXIT_OK


def _count(args: argparse.Namespace, text: str | None, filters: dict[str, Any]) -> int:
    for name in ("cursor", "direction"):
        if filters.pop(name, None) is not None:
            raise UserError(f"--{'forward' if name == 'direction' else name}: a count has no pages")
    with _client(args) as client:
        result = client.count(text, **filters)
    if args.format in ("json", "ndjson"):
        _print_json(result)
    else:
        for line in count_table(result):
            print(line)
    return EXIT_OK


def count_table(result: CountResult) -> list[str]:
    """A count as text: with one bucket, a row per group (its labels, then COUNT); with a step,
    a row per bucket (TIME, then a column per group, named by its label values)."""
    if not result.series:
        return ["no matching entries"]
    names = list(result.series[0].labels)
    if len(result.buckets) == 1 and result.step_seconds is None:
        headers = [name.upper() for name in names] + ["COUNT"]
        rows = [[*(s.labels[n] or '""' for n in names), str(s.counts[0])] for s in result.series]
        return _table(headers, rows)
    columns = [",".join(s.labels[n] or '""' for n in names) or "COUNT" for s in result.series]
    rows = [
        [_time(at), *(str(s.counts[i]) for s in result.series)]
        for i, at in enumerate(result.buckets)
    ]
    return _table(["TIME", *columns], rows)


def _print_table(entries: Sequence[LogEntry], colour: bool) -> None:
    if not entries:
        print("no matching entries", file=sys.stderr)
        return
    rows = []
    for e in entries:
        message = f"{e.message} {_attrs(e)}".rstrip() if e.attributes else e.message
        rows.append(
            [_time(e.timestamp), e.level.value, e.service or "-", e.instance, message.rstrip()]
        )

    def paint(column: int, cell: str, padded: str) -> str:
        if column == 1 and colour:
            return _paint(padded, _LEVEL_COLOURS[LogLevel(cell)], True)
        return padded

    for line in _table(("TIME", "LEVEL", "SERVICE", "INSTANCE", "MESSAGE"), rows, paint=paint):
        print(line)


# -- tail --------------------------------------------------------------------------------------


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _tail(args: argparse.Namespace) -> int:
    filters = _filters(args)
    colour = use_colour(sys.stdout, args.color)
    # Both end the tail with exit 0, even where the caller started us with SIGINT ignored.
    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)
    try:
        with _client(args) as client:
            client.health()  # fail fast (exit 2) when nothing answers; the tail then reconnects
            with client.tail(args.query, **filters) as tail:
                if sys.stderr.isatty():
                    print(f"following {client.base_url} (Ctrl-C stops)", file=sys.stderr)
                for count, entry in enumerate(tail, start=1):
                    if args.format == "ndjson":
                        _print_json(entry)
                    else:
                        sys.stdout.write(format_entry(entry, colour=colour) + "\n")
                    sys.stdout.flush()
                    if args.count and count >= args.count:
                        break
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how a tail ends
        pass
    return EXIT_OK


# -- services ----------------------------------------------------------------------------------


def _services(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            services = client.services()
        except NotFound as exc:
            raise UserError(
                f"{client.base_url} has no instance list: is --url the load balancer? ({exc})"
            ) from exc
    if args.format == "json":
        _print_json(services)
        return EXIT_OK
    if not services:
        print("no instances registered", file=sys.stderr)
        return EXIT_OK
    colour = use_colour(sys.stdout, args.color)
    rows = [_service_row(s) for s in sorted(services, key=lambda s: s.name)]
    status_colours = {"healthy": "32", "draining": "33"}

    def paint(column: int, cell: str, padded: str) -> str:
        if column == 2 and colour:
            return _paint(padded, status_colours.get(cell, "31"), True)
        return padded

    headers = ("NAME", "URL", "STATUS", "HEARTBEAT", "IN-FLIGHT", "SERVED", "WEIGHT")
    for line in _table(headers, rows, paint=paint):
        print(line)
    return EXIT_OK


def _service_row(s: ServiceView) -> list[str]:
    def num(value: int | None) -> str:
        return "-" if value is None else str(value)

    age = "-" if s.heartbeat_age is None else f"{s.heartbeat_age:.1f}s ago"
    return [s.name, s.url, s.status, age, num(s.in_flight), num(s.served), str(s.weight)]


# -- wiring ------------------------------------------------------------------------------------


# How the SDK and the server name the filters, and how the command line does.
_OPTIONS: Final = {
    "levels": "--level",
    "level": "--level",
    "min_level": "--min-level",
    "since": "--since",
    "until": "--until",
    "attr": "--attr",
    "limit": "--limit",
    "cursor": "--cursor",
    "step": "step (in the query)",
}


def _field_errors(errors: Sequence[FieldError], *, options: bool = False) -> str:
    """The errors in one line; with `options`, filters are named as the command line's flags."""
    if options:
        errors = [
            FieldError(field=_OPTIONS.get(e.field, e.field), reason=e.reason, index=e.index)
            for e in errors
        ]
    return "; ".join(e.describe() for e in errors) or "invalid input"


def _run(command: str, handler: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """`handler` with every expected failure turned into one line on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        def fail(code: int, message: str) -> int:
            print(f"aygolog {command}: {message}", file=sys.stderr)
            return code

        try:
            return handler(args)
        except UserError as exc:
            return fail(EXIT_USER_ERROR, str(exc))
        except ValidationError as exc:
            return fail(EXIT_USER_ERROR, _field_errors(exc.errors, options=command != "send"))
        except AuthError as exc:
            return fail(EXIT_USER_ERROR, f"not allowed: {exc}")
        except (Unavailable, RateLimited) as exc:
            return fail(EXIT_UNAVAILABLE, f"server unavailable: {exc}")
        except AygologError as exc:
            return fail(EXIT_UNAVAILABLE, f"server error: {exc}")
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`aygolog query | head`): not an error.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_OK

    return run


def add_client_commands(commands: Any) -> None:
    """Add `send`, `tail`, `query` and `services` to the `aygolog` sub-parsers `commands`."""
    url = _url_parent()
    filters = _filters_parent()
    colour = argparse.ArgumentParser(add_help=False)
    colour.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto",
        help="colour the output (auto: on a terminal, unless NO_COLOR is set)",
    )  # fmt: skip
    colour.add_argument(
        "--no-color", dest="color", action="store_const", const="never", help="never colour"
    )

    send = commands.add_parser(
        "send",
        parents=[url],
        help="send one log, or stdin lines (one log each) in batches",
        description="Send MESSAGE as one log, or with no MESSAGE (or -) every line of stdin, "
        "in batches. Prints the stored id, or how many were sent.",
    )
    send.add_argument("message", nargs="?", help="the message; none or - reads stdin")
    send.add_argument("-l", "--level", default="info", help="the level (default info)")
    send.add_argument("-s", "--service", default=None, help="the service name")
    send.add_argument(
        "-a", "--attr", action="append", default=[], metavar="KEY=VALUE",
        help="an attribute (repeat)",
    )  # fmt: skip
    send.add_argument(
        "--ndjson",
        action="store_true",
        help="stdin lines are JSON objects (message, level, service, attributes, ...)",
    )
    send.add_argument(
        "--batch-size", type=int, default=1000, help="entries per request (default 1000)"
    )
    send.set_defaults(handler=_run("send", _send))

    tail = commands.add_parser(
        "tail",
        parents=[url, filters, colour],
        help="follow new logs live, coloured by level",
        description="Follow new logs as they are stored (Ctrl-C stops).",
    )
    tail.add_argument(
        "--query", help="a query (docs/query.md) to filter with, e.g. 'level>=warning timeout'"
    )
    tail.add_argument("--format", choices=("text", "ndjson"), default="text")
    tail.add_argument("-n", "--count", type=int, default=0, help="stop after this many entries")
    tail.set_defaults(handler=_run("tail", _tail))

    query = commands.add_parser(
        "query",
        parents=[url, filters, colour],
        help="search or count stored logs: a table, JSON or NDJSON",
        description="Search stored logs, newest first, with a query (docs/query.md) and/or the "
        "filter options (they AND). A query ending in `| count() by (...) step ...` prints "
        "its counts instead.",
    )
    query.add_argument(
        "query",
        nargs="?",
        help="e.g. 'level>=warning service:shop timeout' or 'level:error | count() by (service)'"
        " (one that starts with - goes after --: aygolog query -- '-debug timeout')",
    )
    query.add_argument("--since", help="from: RFC 3339, epoch, or relative (15m, 2h, 7d)")
    query.add_argument("--until", help="up to, in the same forms as --since")
    query.add_argument("--limit", type=int, default=100, help="page size, 1-1000 (default 100)")
    query.add_argument("--cursor", help="start after this cursor (a previous page's)")
    query.add_argument("--forward", action="store_true", help="oldest first")
    query.add_argument("--all", action="store_true", help="every matching entry, page after page")
    query.add_argument("--format", choices=("table", "json", "ndjson"), default="table")
    query.add_argument(
        "--json", dest="format", action="store_const", const="json", help="= --format json"
    )
    query.set_defaults(handler=_run("query", _query))

    services = commands.add_parser(
        "services",
        parents=[url, colour],
        help="the load balancer's instances: status, heartbeat, load",
        description="The instances registered with the load balancer.",
    )
    services.add_argument("--format", choices=("table", "json"), default="table")
    services.set_defaults(handler=_run("services", _services))
