"""Shared bits of the benchmarks: a Redis to measure against, sample logs, timing helpers, the
header every load run prints (date, load, commit, versions) and CPU time of processes."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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


# -- what every load benchmark prints and measures ------------------------------------------------


def loadavg() -> str:
    """The 1/5/15-minute load averages, as /proc/loadavg says them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _version(command: list[str]) -> str:
    binary = shutil.which(command[0])
    if binary is None:
        return "not installed"
    done = subprocess.run([binary, *command[1:]], capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].split(" - ")[0].strip() if lines else "unknown"


def git_commit() -> str:
    """The worktree's commit (short hash), with `+dirty` when it has uncommitted changes."""
    here = Path(__file__).parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_header(title: str) -> str:
    """The lines that open every run: what, when (UTC), load, commit and tool versions."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "\n".join(
        [
            f"# {title}",
            f"date: {now}   load average (1/5/15 min) before: {loadavg()}   cpus: {os.cpu_count()}",
            f"git commit: {git_commit()}   python {sys.version.split()[0]}",
            f"nginx: {_version(['nginx', '-v'])}   haproxy: {_version(['haproxy', '-v'])}   "
            f"wrk: {_version(['wrk', '-v'])}",
        ]
    )


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's open-file limit (inherited by wrk and the proxies); the new soft
    limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by these processes (all their threads), in seconds.

    From /proc/PID/stat (utime + stime, in clock ticks); a process that is gone counts 0.
    """
    total = 0
    for pid in pids:
        if (fields := _stat_fields(pid)) is not None:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK
