"""A small Prometheus text-format metrics registry: counters, gauges and histograms with labels.

The Log API and the load balancer each keep one `Metrics` and serve `render()` at `/metrics`.
Updating a metric is a dict update, cheap enough for every request.

Several processes (the load balancer's workers) serve one `/metrics`: each can take a
`snapshot()` of its values (plain lists, to send to another process), and the one answering the
scrape renders its own values merged with the others' (`render(others)`): counters and
histograms are summed; a gauge is summed when it counts something each process has of its own
(`merge="sum"`: connections, requests in flight), else it is the answering process's own value
(`merge="own"`, the default: a view of state every process shares, such as healthy instances).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, TypeVar

__all__ = ["Counter", "Gauge", "Histogram", "Metrics", "Snapshot"]

LabelValues = tuple[str, ...]
Snapshot = dict[str, list[list[Any]]]
"""One process's values by metric name: `[labels, value]` per series of a counter or a summed
gauge, `[labels, bucket counts, sum]` per series of a histogram (lists only, so that it
travels as msgpack or JSON)."""
DEFAULT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self, others: Sequence[Snapshot] = ()) -> list[str]:
        raise NotImplementedError

    def snapshot(self) -> list[list[Any]] | None:
        """This metric's values to merge elsewhere, or None when they are not merged."""
        return None


def _summed(
    name: str, own: dict[LabelValues, float], others: Sequence[Snapshot]
) -> dict[LabelValues, float]:
    if not others:
        return own
    total = dict(own)
    for other in others:
        for labels, value in other.get(name, ()):
            key = tuple(labels)
            total[key] = total.get(key, 0.0) + float(value)
    return total


def _lines(name: str, names: Sequence[str], values: dict[LabelValues, float]) -> list[str]:
    return [f"{name}{_labels(names, k)} {_number(v)}" for k, v in sorted(values.items())]


class Counter(_Metric):
    """A value that only goes up; incremented, or read from a callback at render time."""

    kind = "counter"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        read: Callable[[], dict[LabelValues, float]] | None = None,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[LabelValues, float] = {}
        self._read = read

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        """Add `amount` to the series with these label values."""
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels: str) -> float:
        """The current value of one series (0 when never incremented)."""
        return self.values.get(labels, 0.0)

    def current(self) -> dict[LabelValues, float]:
        """Every series' value now."""
        return self._read() if self._read is not None else self.values

    def samples(self, others: Sequence[Snapshot] = ()) -> list[str]:
        return _lines(self.name, self.label_names, _summed(self.name, self.current(), others))

    def snapshot(self) -> list[list[Any]] | None:
        return [[list(k), v] for k, v in self.current().items()]


class Gauge(_Metric):
    """A value that goes up and down, set directly or read from a callback at render time.

    `merge` says what a scrape answered for several processes shows: `"sum"` of theirs, or the
    answering process's `"own"` value.
    """

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        read: Callable[[], dict[LabelValues, float]] | None = None,
        merge: Literal["own", "sum"] = "own",
    ) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[LabelValues, float] = {}
        self._read = read
        self.merge = merge

    def set(self, value: float, *labels: str) -> None:
        """Set the series with these label values."""
        self.values[labels] = value

    def current(self) -> dict[LabelValues, float]:
        """Every series' value now."""
        return self._read() if self._read is not None else self.values

    def samples(self, others: Sequence[Snapshot] = ()) -> list[str]:
        values = self.current()
        if self.merge == "sum":
            values = _summed(self.name, values, others)
        return _lines(self.name, self.label_names, values)

    def snapshot(self) -> list[list[Any]] | None:
        if self.merge != "sum":
            return None
        return [[list(k), v] for k, v in self.current().items()]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        """Count one observation."""
        found = self.series.get(labels)
        if found is None:
            found = self.series[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        counts, total = found
        counts[bisect.bisect_left(self.buckets, value)] += 1
        total[0] += value

    def count(self, *labels: str) -> int:
        """How many observations one series holds."""
        found = self.series.get(labels)
        return sum(found[0]) if found else 0

    def snapshot(self) -> list[list[Any]] | None:
        return [[list(k), list(counts), total[0]] for k, (counts, total) in self.series.items()]

    def _merged(
        self, others: Sequence[Snapshot]
    ) -> dict[LabelValues, tuple[list[int], list[float]]]:
        if not others:
            return self.series
        merged = {k: (list(counts), list(total)) for k, (counts, total) in self.series.items()}
        width = len(self.buckets) + 1
        for other in others:
            for labels, counts, total in other.get(self.name, ()):
                if len(counts) != width:
                    continue  # another process with other buckets: not comparable
                key = tuple(labels)
                found = merged.get(key)
                if found is None:
                    found = merged[key] = ([0] * width, [0.0])
                for i, count in enumerate(counts):
                    found[0][i] += int(count)
                found[1][0] += float(total)
        return merged

    def samples(self, others: Sequence[Snapshot] = ()) -> list[str]:
        lines = []
        for key, (counts, total) in sorted(self._merged(others).items()):
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total[0])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


_M = TypeVar("_M", bound=_Metric)


class Metrics:
    """The metrics of one process, rendered in Prometheus text format 0.0.4."""

    content_type: Final = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def counter(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        read: Callable[[], dict[LabelValues, float]] | None = None,
    ) -> Counter:
        """Create and keep a counter; `read`, when given, computes its series at render time."""
        return self._add(Counter(name, help_text, labels, read))

    def gauge(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        read: Callable[[], dict[LabelValues, float]] | None = None,
        merge: Literal["own", "sum"] = "own",
    ) -> Gauge:
        """Create and keep a gauge; `read` computes its series at render time; `merge` says
        whether a render merged with other processes sums it or shows this one's value."""
        return self._add(Gauge(name, help_text, labels, read, merge))

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """Create and keep a histogram."""
        return self._add(Histogram(name, help_text, labels, buckets))

    def render(self, others: Iterable[Snapshot] = ()) -> str:
        """Every metric in Prometheus text format, merged with other processes' snapshots
        (see the module docstring)."""
        merged = list(others)
        lines: list[str] = []
        for metric in self._metrics:
            lines += metric.header()
            lines += metric.samples(merged)
        return "\n".join(lines) + "\n"

    def snapshot(self) -> Snapshot:
        """This process's values of the metrics that are merged (see the module docstring)."""
        found: Snapshot = {}
        for metric in self._metrics:
            values = metric.snapshot()
            if values is not None:
                found[metric.name] = values
        return found

    def _add(self, metric: _M) -> _M:
        self._metrics.append(metric)
        return metric
