"""Counts over time (`| count() by (...) step ...`): the time window, its buckets, the labels.

Buckets are aligned to multiples of the step from the epoch; a step without `since` counts the
hour before `until` (now by default). Without a step there is one bucket, starting at `since`
(the epoch when there is none).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from aygolog.errors import ValidationError
from aygolog.models import CountResult, CountSeries, FieldError, LogEntry
from aygolog.query.plan import CountSpec, Plan

__all__ = ["MAX_BUCKETS", "CountWindow", "count_window", "label_of"]

MAX_BUCKETS: Final = 10_000
DEFAULT_RANGE: Final = timedelta(hours=1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class CountWindow:
    """The receive-time range of a count (ms, inclusive) and its buckets."""

    since_ms: int
    until_ms: int
    step_ms: int
    """0: one bucket."""
    first_ms: int
    """Start of the first bucket."""
    buckets: int

    def result(
        self, spec: CountSpec, counts: dict[tuple[str, ...], list[int]], complete: bool
    ) -> CountResult:
        """The answer, series sorted by their labels."""
        starts = [
            datetime.fromtimestamp((self.first_ms + i * self.step_ms) / 1000, UTC)
            for i in range(self.buckets)
        ]
        series = [
            CountSeries(labels=dict(zip(spec.by, labels, strict=True)), counts=values)
            for labels, values in sorted(counts.items())
        ]
        return CountResult(
            buckets=starts,
            step_seconds=self.step_ms / 1000 if self.step_ms else None,
            series=series,
            complete=complete,
        )


def count_window(plan: Plan, spec: CountSpec, now: datetime) -> CountWindow:
    """The window of a count plan.

    Raises:
        ValidationError: the step is not positive, or makes more than `MAX_BUCKETS` buckets.
    """
    until = plan.until or now
    step_ms = 0
    if spec.step is not None:
        step_ms = int(spec.step.total_seconds() * 1000)
        if step_ms < 1:
            raise ValidationError([FieldError(field="step", reason="must be at least 1 ms")])
    since = plan.since or (until - DEFAULT_RANGE if step_ms else _EPOCH)
    since_ms, until_ms = max(0, _ms(since)), max(0, _ms(until))
    if step_ms:
        first = since_ms - since_ms % step_ms
        buckets = (until_ms - until_ms % step_ms - first) // step_ms + 1
        if buckets > MAX_BUCKETS:
            reason = f"makes {buckets} buckets over the time range; at most {MAX_BUCKETS}"
            raise ValidationError([FieldError(field="step", reason=reason)])
        return CountWindow(since_ms, until_ms, step_ms, first, max(0, buckets))
    return CountWindow(since_ms, until_ms, 0, since_ms, 1)


def label_of(entry: LogEntry, field: str) -> str:
    """The group label of `entry` for `by` field `field` ("" when it has none)."""
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
    return str(value)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)
