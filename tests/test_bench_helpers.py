"""The benchmark helpers read wrk and /metrics right (benchmarks/_wrk.py, lb_vs_nginx.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import _wrk  # noqa: E402 - from benchmarks/, on the path just above
from _common import cpu_seconds, process_tree  # noqa: E402
from _frontends import wait_listening  # noqa: E402
from aygolog.embedded import free_port  # noqa: E402
from lb_vs_nginx import telling_deltas  # noqa: E402

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:8080/api/log
  2 threads and 512 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   477.17ms  300.00ms   2.00s    70.00%
    Req/Sec   400.00    100.00   600.00     70.00%
  Latency Distribution
     50%  477.17ms
     75%  600.00ms
     90%  900.00ms
     99%    1.67s
  3600 requests in 5.01s, 1.00MB read
  Socket errors: connect 0, read 40, write 0, timeout 102
  Non-2xx or 3xx responses: 58
Requests/sec:    718.56
Transfer/sec:    200.00KB
STATUS 201 3542
STATUS 503 58
SERVED 503 - 50
SERVED 503 api-1 8
BODY 503 {"detail": "no healthy instance"}
"""


def test_parse_reads_rate_latency_errors_and_the_status_hook() -> None:
    result = _wrk.parse(WRK_OUTPUT)
    assert result.requests == 3600
    assert result.seconds == pytest.approx(5.01)
    assert result.requests_per_second == pytest.approx(718.56)
    assert result.p50_ms == pytest.approx(477.17)
    assert result.p99_ms == pytest.approx(1670.0)
    assert result.non_2xx == 58
    assert result.socket_errors == {"connect": 0, "read": 40, "write": 0, "timeout": 102}
    assert result.statuses == {201: 3542, 503: 58}
    assert result.served_by == {"503 -": 50, "503 api-1": 8}
    assert result.bodies == {503: '{"detail": "no healthy instance"}'}
    assert result.non_2xx_share == pytest.approx(58 / 3600)
    # Timeouts are slow responses (already among the 3600); read errors got no response.
    assert result.failed_share == pytest.approx((58 + 40 + 102) / (3600 + 40))


def test_parse_without_errors_has_none() -> None:
    quiet = WRK_OUTPUT.replace("  Socket errors: connect 0, read 40, write 0, timeout 102\n", "")
    quiet = quiet.replace("  Non-2xx or 3xx responses: 58\n", "")
    result = _wrk.parse(quiet)
    assert result.non_2xx == 0
    assert result.socket_error_count == 0
    assert result.failed_share == 0.0


def test_parse_refuses_output_that_is_not_wrk_latency_output() -> None:
    with pytest.raises(RuntimeError, match="unexpected wrk output"):
        _wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


@pytest.fixture
def fixed_answer_upstream() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "proxy_bench.py"), "_upstreams", str(port)]
    )
    try:
        wait_listening(port, process=process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_the_status_hook_counts_every_response_of_a_real_wrk_run(
    fixed_answer_upstream: int,
) -> None:
    result = _wrk.run(
        f"http://127.0.0.1:{fixed_answer_upstream}/api/log",
        body=b"{}",
        seconds=1,
        connections=2,
        threads=1,
        statuses=True,
    )
    assert result.requests > 0
    assert result.statuses == {201: result.requests}
    assert result.non_2xx == 0
    assert result.cpu_seconds > 0  # wrk's own CPU time, from the children's rusage


def test_process_tree_and_cpu_seconds_see_a_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree(os.getpid())
        assert cpu_seconds([child.pid]) >= 0.0
        assert cpu_seconds([os.getpid()]) > 0.0
    finally:
        child.kill()
        child.wait()
    assert cpu_seconds([child.pid]) == 0.0  # gone: counts nothing


def test_telling_deltas_keeps_failures_and_drops_successes() -> None:
    before = {
        'aygolog_lb_requests_total{instance="api-1",status="201"}': 10.0,
        'aygolog_lb_requests_total{instance="api-1",status="503"}': 1.0,
        "aygolog_lb_retries_total": 0.0,
    }
    after = {
        'aygolog_lb_requests_total{instance="api-1",status="201"}': 500.0,
        'aygolog_lb_requests_total{instance="api-1",status="503"}': 4.0,
        'aygolog_lb_requests_total{instance="api-2",status="0"}': 2.0,
        "aygolog_lb_retries_total": 3.0,
        'aygolog_lb_ejections_total{instance="api-2"}': 1.0,
        'aygolog_http_requests_total{route="/api/log",status="201"}': 9.0,
    }
    assert telling_deltas(before, after) == {
        'aygolog_lb_requests_total{instance="api-1",status="503"}': 3.0,
        'aygolog_lb_requests_total{instance="api-2",status="0"}': 2.0,
        "aygolog_lb_retries_total": 3.0,
        'aygolog_lb_ejections_total{instance="api-2"}': 1.0,
    }
