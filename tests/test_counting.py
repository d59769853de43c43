"""The bucket and group rules of counts (`aygolog.store.counting`), on plans made by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aygolog.errors import ValidationError
from aygolog.models import LogEntry, LogLevel
from aygolog.query import CountSpec, Plan
from aygolog.store.base import MAX_ID_PART
from aygolog.store.counting import MAX_BUCKETS, Tally, count_frame, label_value

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def at(offset: timedelta) -> int:
    return int((T0 + offset).timestamp() * 1000)


def entry(
    ms: int, level: LogLevel = LogLevel.INFO, **attributes: str | int | float | bool
) -> LogEntry:
    when = datetime.fromtimestamp(ms / 1000, UTC)
    return LogEntry(
        id=f"{ms}-0", message="m", level=level, timestamp=when, received_at=when,
        instance="api-1", service="shop" if level is LogLevel.ERROR else None,
        attributes=dict(attributes),
    )  # fmt: skip


def test_buckets_are_aligned_to_the_epoch_and_cover_the_range() -> None:
    plan = Plan(
        count=CountSpec(step=MINUTE), since=T0 + timedelta(seconds=30), until=T0 + 3 * MINUTE
    )
    frame = count_frame(plan)
    assert frame.starts() == [T0, T0 + MINUTE, T0 + 2 * MINUTE, T0 + 3 * MINUTE]
    assert frame.bounds == ((at(timedelta(seconds=30)), 0), (at(3 * MINUTE), MAX_ID_PART))
    assert frame.bucket(at(timedelta(seconds=59))) == 0
    assert frame.bucket(at(MINUTE)) == 1
    assert frame.bucket(at(3 * MINUTE)) == 3


def test_without_a_start_the_range_is_the_hour_before_its_end_and_the_end_is_now() -> None:
    frame = count_frame(Plan(count=CountSpec(step=timedelta(minutes=10))), now=T0)
    starts = frame.starts()
    assert (starts[0], starts[-1], len(starts)) == (T0 - timedelta(hours=1), T0, 7)
    ended = count_frame(Plan(count=CountSpec(step=MINUTE), until=T0 + timedelta(hours=5)))
    assert ended.starts()[0] == T0 + timedelta(hours=4)


def test_without_a_step_one_bucket_counts_the_whole_range() -> None:
    frame = count_frame(Plan())
    assert (frame.buckets, frame.step_ms, frame.starts()) == (
        1, None, [datetime(1970, 1, 1, tzinfo=UTC)]
    )  # fmt: skip
    assert frame.bounds == ((0, 0), (MAX_ID_PART, MAX_ID_PART))
    since = count_frame(Plan(count=CountSpec(by=("level",)), since=T0))
    assert since.starts() == [T0]
    tally = Tally(frame)
    tally.add(entry(at(MINUTE)), at(MINUTE))
    result = tally.result()
    assert (result.step_seconds, [s.counts for s in result.series]) == (None, [[1]])


@pytest.mark.parametrize(
    ("step", "hours", "ok"),
    [(timedelta(seconds=1), 3, True), (timedelta(seconds=1), 4, False),
     (timedelta(milliseconds=1), 0.003, True), (timedelta(microseconds=10), 0, False)],
)  # fmt: skip
def test_too_many_buckets_or_a_step_under_a_millisecond_is_refused_naming_step(
    step: timedelta, hours: float, ok: bool
) -> None:
    plan = Plan(count=CountSpec(step=step), since=T0, until=T0 + timedelta(hours=hours))
    if ok:
        assert count_frame(plan).buckets <= MAX_BUCKETS
        return
    with pytest.raises(ValidationError) as caught:
        count_frame(plan)
    assert caught.value.errors[0].field == "step"


def test_an_empty_plan_or_an_inverted_range_counts_nothing() -> None:
    assert count_frame(Plan(empty=True)).bounds is None
    inverted = count_frame(Plan(count=CountSpec(step=MINUTE), since=T0, until=T0 - MINUTE))
    assert inverted.bounds is None
    assert Tally(inverted).result().series[0].counts == [0] * inverted.buckets


def test_groups_by_built_in_fields_and_attributes_sorted_missing_is_empty() -> None:
    frame = count_frame(
        Plan(count=CountSpec(by=("level", "code"), step=MINUTE), since=T0, until=T0 + MINUTE)
    )
    tally = Tally(frame)
    rows: list[tuple[int, LogLevel, dict[str, int | str]]] = [
        (at(timedelta(0)), LogLevel.ERROR, {"code": 500}),
        (at(timedelta(seconds=70)), LogLevel.ERROR, {"code": 500}),
        (at(timedelta(seconds=5)), LogLevel.INFO, {}),
        (at(timedelta(seconds=6)), LogLevel.ERROR, {"code": "E1"}),
    ]
    for ms, level, attrs in rows:
        tally.add(entry(ms, level, **attrs), ms)
    result = tally.result()
    assert [(s.labels, s.counts) for s in result.series] == [
        ({"level": "error", "code": "500"}, [1, 1]),
        ({"level": "error", "code": "E1"}, [1, 0]),
        ({"level": "info", "code": ""}, [1, 0]),
    ]
    assert result.step_seconds == 60.0
    assert Tally(frame).result().series == []  # with `by`, no group without entries


def test_label_values() -> None:
    e = entry(at(timedelta(0)), LogLevel.ERROR, ok=True, dur=1500.5, n=5, s="x y")
    assert [label_value(e, f) for f in ("level", "service", "instance", "trace_id")] == [
        "error", "shop", "api-1", ""
    ]  # fmt: skip
    assert [label_value(e, f) for f in ("ok", "dur", "n", "s", "absent")] == [
        "true", "1500.5", "5", "x y", ""
    ]  # fmt: skip
