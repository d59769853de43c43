"""The query language end to end: the SDK and the `aygolog` command against a live system
(Redis, the load balancer, 3 Log API instances as real processes)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from aygolog._cli_client import count_table
from aygolog.cli import main
from aygolog.client import AsyncLogClient, LogClient
from aygolog.models import CountResult, CountSeries
from aygolog.query import QuerySyntaxError
from support import LiveStack

pytestmark = pytest.mark.timeout(420)


def aygolog(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AYGOLOG_URL", "NO_COLOR")}
    return subprocess.run(
        [sys.executable, "-m", "aygolog", *args], capture_output=True, text=True, timeout=60,
        env=env,
    )  # fmt: skip


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def fill(url: str, service: str) -> None:
    with LogClient(url, service=service) as client:
        client.log_many(
            [
                {"message": "order 17 paid", "level": "info", "attributes": {"status": 200}},
                {"message": "order 18 timeout", "level": "error", "attributes": {"status": 504}},
                {"message": "order 19 timeout", "level": "warning", "attributes": {"status": 504}},
                {"message": "card declined", "level": "error", "attributes": {"status": 402}},
            ]
        )


def test_the_sdk_queries_and_counts_through_the_load_balancer(stack: LiveStack) -> None:
    service = unique("sdk")
    fill(stack.url, service)
    with LogClient(stack.url) as client:
        page = client.query(f"service:{service} timeout", limit=1)
        assert [e.message for e in page.items] == ["order 19 timeout"]
        assert page.next_cursor is not None
        rest = client.query(f"service:{service} timeout", limit=1, cursor=page.next_cursor)
        assert [e.message for e in rest.items] == ["order 18 timeout"]
        assert [e.message for e in client.iter_logs(f"service:{service} status:>=500")] == [
            "order 19 timeout", "order 18 timeout"
        ]  # fmt: skip
        counts = client.count(f"service:{service} | count() by (level, status)")
        assert {tuple(s.labels.values()): s.counts for s in counts.series} == {
            ("error", "402"): [1], ("error", "504"): [1], ("info", "200"): [1],
            ("warning", "504"): [1],
        }  # fmt: skip
        stepped = client.count(f"service:{service} | count() step 1m", since="10m")
        assert stepped.step_seconds == 60.0
        assert sum(stepped.series[0].counts) == 4
        with pytest.raises(QuerySyntaxError) as caught:
            client.query(f"service:{service} (timeout")
        assert caught.value.errors[0].field == "query"


async def test_the_async_sdk_alike(stack: LiveStack) -> None:
    service = unique("async")
    fill(stack.url, service)
    async with AsyncLogClient(stack.url) as client:
        page = await client.query(f"service:{service} -timeout level:error")
        assert [e.message for e in page.items] == ["card declined"]
        total = await client.count(f"service:{service}", min_level="warning")
        assert total.series[0].counts == [3]


def test_aygolog_query_prints_a_table_json_and_counts(stack: LiveStack) -> None:
    service = unique("cli")
    fill(stack.url, service)
    table = aygolog("query", f"service:{service} timeout", "--url", stack.url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TIME", "LEVEL", "SERVICE", "INSTANCE", "MESSAGE"]
    assert [line.split()[1] for line in lines[1:]] == ["warning", "error"]
    as_json = aygolog("query", f"service:{service}", "-l", "error", "--json", "--url", stack.url)
    assert as_json.returncode == 0, as_json.stderr
    assert [e["message"] for e in json.loads(as_json.stdout)["items"]] == [
        "card declined", "order 18 timeout"
    ]  # fmt: skip
    limited = aygolog("query", f"service:{service} | limit 1", "--url", stack.url, "--json")
    assert len(json.loads(limited.stdout)["items"]) == 1
    counted = aygolog("query", f"service:{service} | count() by (level)", "--url", stack.url)
    assert counted.returncode == 0, counted.stderr
    assert [line.split() for line in counted.stdout.splitlines()] == [
        ["LEVEL", "COUNT"], ["error", "2"], ["info", "1"], ["warning", "1"]
    ]  # fmt: skip
    bad = aygolog("query", "service:(a OR", "--url", stack.url)
    assert bad.returncode == 1
    assert bad.stderr.startswith("aygolog query: query: at 13: expected ")
    assert "Traceback" not in bad.stderr


def test_count_table_shapes() -> None:
    at = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    stepped = CountResult(
        buckets=[at, at.replace(minute=1)],
        step_seconds=60,
        series=[
            CountSeries(labels={"level": "error", "code": ""}, counts=[1, 0]),
            CountSeries(labels={"level": "info", "code": "200"}, counts=[3, 4]),
        ],
    )
    assert [line.split() for line in count_table(stepped)] == [
        ["TIME", 'error,""', "info,200"],
        ["2026-12-06T10:00:00.000Z", "1", "3"],
        ["2026-12-06T10:01:00.000Z", "0", "4"],
    ]
    total = CountResult(buckets=[at], series=[CountSeries(labels={}, counts=[7])])
    assert [line.split() for line in count_table(total)] == [["COUNT"], ["7"]]
    assert count_table(CountResult(buckets=[at], series=[])) == ["no matching entries"]


def test_aygolog_tail_takes_a_query(stack: LiveStack) -> None:
    service = unique("tailq")
    command = [sys.executable, "-m", "aygolog", "tail", "--url", stack.url, "--format", "ndjson",
               "-n", "1", "--query", f"service:{service} level>=warning timeout"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as tail:
        assert tail.stdout is not None
        with LogClient(stack.url, service=service) as client:
            deadline = time.monotonic() + 60
            line = ""
            while not line and time.monotonic() < deadline and tail.poll() is None:
                client.log("timeout but only info", level="info")
                client.log("a warning without the word", level="warning")
                client.log("upstream timeout", level="warning")
                ready, _, _ = select.select([tail.stdout], [], [], 0.5)  # until it subscribed
                line = tail.stdout.readline() if ready else ""
        assert json.loads(line)["message"] == "upstream timeout"
        assert tail.wait(30) == 0
    refused = aygolog("tail", "--url", stack.url, "--query", "error _time:5m")
    assert refused.returncode == 1
    assert "query:" in refused.stderr
    assert "time range" in refused.stderr


def test_a_long_query_is_a_4xx_through_the_load_balancer(stack: LiveStack) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        long = http.get("/api/logs", params={"query": "x " * 5000})
        assert long.status_code == 400
        assert long.json()["detail"][0]["field"] == "query"
        huge = http.get("/api/logs/count", params={"query": "x" * 60_000})
        assert 400 <= huge.status_code < 500, huge.text[:200]


def test_a_query_the_parser_cannot_compute_is_a_user_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["query", "--url", "http://127.0.0.1:9", "_time:999999999999d"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("aygolog query: query: at 6: expected a duration"), error
    assert "at most 3650d" in error
