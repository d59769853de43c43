"""Shared bits of the benchmarks: a Redis to measure against, sample logs, timing helpers."""

from __future__ import annotations

import contextlib
import random
import statistics
from collections.abc import Iterator

from aygolog.embedded import EmbeddedRedis
from aygolog.models import LogLevel, NewLog

SERVICES = ("api", "auth", "billing", "storage", "web")


def sample_logs(count: int, *, error_share: float = 0.01, seed: int = 7) -> list[NewLog]:
    """Realistic small logs: ~80-character messages, a service, two attributes."""
    rng = random.Random(seed)
    logs = []
    for i in range(count):
        level = LogLevel.ERROR if rng.random() < error_share else LogLevel.INFO
        logs.append(
            NewLog(
                message=f"request {i} handled: GET /api/items/{rng.randrange(10**6)} in "
                f"{rng.randrange(1, 900)} ms for user u{rng.randrange(5000)}",
                level=level,
                service=SERVICES[i % len(SERVICES)],
                attributes={"status": 200 if level is LogLevel.INFO else 500, "node": "n1"},
            )
        )
    return logs


@contextlib.contextmanager
def redis_target(url: str | None) -> Iterator[str]:
    """The given URL, or a private server started for the run."""
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values)
