"""Counts over time (`LogStore.count`): the buckets of a count and how entries fall into them.

The rules, close to Loki's and VictoriaLogs' (`| count() by (level) step 1m`):

- Time is the receive time (the stream id), as for `since`/`until`.
- With a `step`, the range is the query's time range (`since`/`until` and `_time`); without an
  end it ends now, and without a start it starts one hour before its end (as Grafana's default
  panel). Buckets start at multiples of `step` from the Unix epoch (so two counts of the same
  step line up), from the bucket holding the range's start to the bucket holding its end; the
  first and last buckets may be partly outside the range, and only entries inside it count.
  At most `MAX_BUCKETS` buckets (Loki's 11,000): more is refused naming `step`.
- Without a `step`, one bucket counts the whole range (all time without `since`/`until`); its
  start is `since`, or the epoch when there is none.
- `by (field, ...)` groups by `level`, `service`, `instance`, `trace_id`, or any attribute;
  a missing one is "". Attribute values are text: strings as they are, booleans
  `true`/`false`, numbers as their JSON text (`5`, `1500.5`).
- Series come sorted by their label values (in `by` order). Without `by` there is always one
  series (zeros when nothing matched); with `by`, one per group that has at least one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec

from aygolog.errors import ValidationError
from aygolog.models import CountResult, CountSeries, FieldError, LogEntry
from aygolog.query import CountSpec, Plan
from aygolog.store.base import MAX_ID_PART, StreamKey, time_bounds

__all__ = [
    "DEFAULT_COUNT_RANGE",
    "MAX_BUCKETS",
    "CountFrame",
    "Tally",
    "count_frame",
    "label_value",
]

MAX_BUCKETS: Final = 11_000
DEFAULT_COUNT_RANGE: Final = timedelta(hours=1)
_encode: Final = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class CountFrame:
    """The buckets of one count, and the ids it counts.

    `bounds` is the inclusive stream-id range counted (None: nothing can be counted);
    `first_ms` the start of the first bucket, `step_ms` the bucket width (None: one bucket).
    """

    spec: CountSpec
    bounds: tuple[StreamKey, StreamKey] | None
    first_ms: int
    step_ms: int | None
    buckets: int

    def bucket(self, ms: int) -> int:
        """The index of the bucket holding receive time `ms` (inside `bounds`)."""
        return 0 if self.step_ms is None else (ms - self.first_ms) // self.step_ms

    def starts(self) -> list[datetime]:
        """Each bucket's start time."""
        step = self.step_ms or 0
        return [
            datetime.fromtimestamp((self.first_ms + i * step) / 1000, UTC)
            for i in range(self.buckets)
        ]


def count_frame(plan: Plan, *, now: datetime | None = None) -> CountFrame:
    """The buckets of `plan`'s count (a total when it has no `| count()` pipe).

    Raises:
        ValidationError: a step under 1 ms, or more than `MAX_BUCKETS` buckets (field "step").
    """
    spec = plan.count or CountSpec()
    since, until = plan.since, plan.until
    if spec.step is None:
        bounds = None if plan.empty else time_bounds(since, until)
        first = max(0, _ms(since)) if since is not None else 0
        return CountFrame(spec=spec, bounds=bounds, first_ms=first, step_ms=None, buckets=1)
    step_ms = int(spec.step / timedelta(milliseconds=1))
    if step_ms < 1:
        raise ValidationError([FieldError(field="step", reason="must be at least 1ms")])
    if until is None:
        until = now or datetime.now(UTC)
    if since is None:
        since = until - DEFAULT_COUNT_RANGE
    low_ms = min(max(0, _ms(since)), MAX_ID_PART)
    high_ms = min(max(0, _ms(until)), MAX_ID_PART)
    first = low_ms - low_ms % step_ms
    last = high_ms - high_ms % step_ms
    buckets = 1 if high_ms < low_ms else (last - first) // step_ms + 1
    if buckets > MAX_BUCKETS:
        raise ValidationError(
            [
                FieldError(
                    field="step",
                    reason=f"{buckets} buckets of {spec.step} over the time range; at most "
                    f"{MAX_BUCKETS}: use a larger step or a shorter range",
                )
            ]
        )
    bounds = None if plan.empty else time_bounds(since, until)
    return CountFrame(spec=spec, bounds=bounds, first_ms=first, step_ms=step_ms, buckets=buckets)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def label_value(entry: LogEntry, field: str) -> str:
    """The value of `field` that a `by (field)` groups `entry` under ("" when it has none)."""
    if field == "level":
        return entry.level.value
    if field == "service":
        return entry.service or ""
    if field == "instance":
        return entry.instance
    if field == "trace_id":
        return entry.trace_id or ""
    value = entry.attributes.get(field)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return _encode(value).decode()


class Tally:
    """Counts entries into the buckets of a `CountFrame`, per group, then makes the result."""

    def __init__(self, frame: CountFrame) -> None:
        self.frame = frame
        self.groups: dict[tuple[str, ...], list[int]] = {}
        if not frame.spec.by:
            self.groups[()] = [0] * frame.buckets
        self.complete = True
        """Set False by a store that stopped before the end of the range (a scan limit)."""

    def add(self, entry: LogEntry, ms: int) -> None:
        """Count `entry`, received at `ms` (which must be inside the frame's bounds)."""
        frame = self.frame
        key = tuple(label_value(entry, field) for field in frame.spec.by)
        counts = self.groups.get(key)
        if counts is None:
            counts = self.groups[key] = [0] * frame.buckets
        counts[frame.bucket(ms)] += 1

    def add_counts(self, labels: tuple[str, ...], counts: list[int]) -> None:
        """Add counts made elsewhere (e.g. per block, or by another partition)."""
        mine = self.groups.setdefault(labels, [0] * self.frame.buckets)
        for i, n in enumerate(counts):
            mine[i] += n

    def result(self) -> CountResult:
        """The `CountResult`: series sorted by their label values."""
        frame = self.frame
        by = frame.spec.by
        series = [
            CountSeries(labels=dict(zip(by, key, strict=True)), counts=counts)
            for key, counts in sorted(self.groups.items())
        ]
        step = None if frame.step_ms is None else frame.step_ms / 1000
        return CountResult(
            buckets=frame.starts(), step_seconds=step, series=series, complete=self.complete
        )
