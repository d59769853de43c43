"""`aygolog lb --workers 2`: real supervisor and worker processes on one port, Redis, and stand-in
instances (HTTP servers in this process). The bus's rules are tested in one process in
test_lb_bus.py; here, that they hold between real processes."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aygolog.embedded import EmbeddedRedis, free_port
from aygolog.lb.workers import WORKER_VARIABLE, worker_info
from stub_instance import Stub
from support import ServiceProcess, children, wait_until

TOKEN = "workers-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.timeout(180)


def lb_env(redis: EmbeddedRedis, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "AYGOLOG_REDIS_URL": redis.url,
        "AYGOLOG_REDIS_PREFIX": prefix,
        "AYGOLOG_REGISTRATION_TOKEN": TOKEN,
        "AYGOLOG_LB_WORKERS": "2",
        "AYGOLOG_HEALTH_CHECK_INTERVAL": "0",  # only passive ejection: what these tests watch
        "AYGOLOG_HEARTBEAT_TTL": "120",  # the stand-ins do not heartbeat
        "AYGOLOG_EJECTION_BASE": "120",
        "AYGOLOG_STRATEGY": "round_robin",
        **extra,
    }


def register(lb: str, name: str, url: str) -> None:
    answer = httpx.post(f"{lb}/api/registration", json={"name": name, "url": url}, headers=AUTH)
    assert answer.status_code in (200, 201), answer.text


def deregister(lb: str, name: str) -> None:
    httpx.delete(f"{lb}/api/registration/{name}", headers=AUTH)


def health(url: str, **kwargs: Any) -> dict[str, Any]:
    """/health on a new connection (so the kernel may pick either worker)."""
    with httpx.Client(**kwargs) as client:
        answer: dict[str, Any] = client.get(url + "/health", timeout=5).json()
        return answer


def by_worker(
    url: str, want: int = 2, tries: int = 200, **kwargs: Any
) -> dict[int, dict[str, Any]]:
    """The /health answer of each worker, keyed by PID, from new connections."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(tries):
        answer = health(url, **kwargs)
        seen[answer["worker"]["pid"]] = answer
        if len(seen) >= want:
            break
    return seen


def metric(text: str, name: str) -> dict[str, float]:
    """Every series of one metric in a Prometheus text, by its label text."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(\{{[^}}]*\}})? (\S+)", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def scrape(url: str) -> str:
    with httpx.Client() as client:  # a new connection: either worker answers
        return client.get(url + "/metrics", timeout=5).text


@pytest.fixture(scope="module")
def redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def lb(redis: EmbeddedRedis) -> Iterator[ServiceProcess]:
    process = ServiceProcess("lb", env=lb_env(redis, "workers")).start(timeout=90)
    yield process
    process.close()


def workers_of(process: ServiceProcess) -> list[int]:
    assert process.process is not None
    return sorted(children(process.process.pid))


def test_two_workers_serve_one_port_and_metrics_sum_over_both(lb: ServiceProcess) -> None:
    pids = workers_of(lb)
    assert len(pids) == 2
    # New connections land on both workers (the kernel spreads them: SO_REUSEPORT).
    assert sorted(by_worker(lb.url)) == pids
    stub = Stub().start()
    register(lb.url, "sum-a", stub.url)
    try:
        requests = 40
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(lambda _: httpx.get(lb.url + "/api/log", timeout=10).status_code,
                         range(requests))
            )  # fmt: skip
        assert codes == [200] * requests
        assert stub.served == requests
        for _ in range(3):  # whichever worker answers the scrape, the totals are the same
            text = scrape(lb.url)
            assert metric(text, "aygolog_lb_requests_total") == {
                '{instance="sum-a",status="200"}': requests
            }
            assert metric(text, "aygolog_lb_request_seconds_count") == {
                '{instance="sum-a"}': requests
            }
            assert metric(text, "aygolog_lb_workers_reporting") == {"": 2}
            per_worker = metric(text, "aygolog_lb_worker_proxied_total")
            assert sorted(per_worker) == ['{worker="0"}', '{worker="1"}']
            assert all(n > 0 for n in per_worker.values())  # both proxied some
            assert sum(per_worker.values()) == requests
    finally:
        deregister(lb.url, "sum-a")
        stub.close()


def test_an_ejection_in_one_worker_is_seen_by_the_other(lb: ServiceProcess) -> None:
    good = Stub().start()
    register(lb.url, "ej-good", good.url)
    register(lb.url, "ej-dead", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        assert wait_until(
            lambda: all(a["instances"]["healthy"] == 2 for a in by_worker(lb.url).values()),
            timeout=10,
        )
        # One connection, so one worker: round robin sends one of two requests to the dead one,
        # which is refused, ejected at once, and retried on the good one.
        with httpx.Client() as client:
            codes = [client.get(lb.url + "/api/log").status_code for _ in range(4)]
            assert codes == [200] * 4
            ejecting = client.get(lb.url + "/health").json()["worker"]["pid"]
        answers = by_worker(lb.url)
        assert len(answers) == 2
        for pid, answer in answers.items():
            assert answer["instances"]["ejected"] == 1, (pid, ejecting)
            assert answer["healthy_instances"] == 1
        # Decided once, by one worker; the other applied it without counting it again.
        text = scrape(lb.url)
        assert metric(text, "aygolog_lb_ejections_total") == {'{instance="ej-dead"}': 1}
        proxied = metric(text, "aygolog_lb_requests_total")
        assert proxied['{instance="ej-good",status="200"}'] == 4
    finally:
        deregister(lb.url, "ej-good")
        deregister(lb.url, "ej-dead")
        good.close()


def test_a_registration_on_one_worker_is_routable_on_both(lb: ServiceProcess) -> None:
    stub = Stub().start()
    try:
        register(lb.url, "reg-a", stub.url)  # answered by one worker
        answers = by_worker(lb.url)  # at once, on both
        assert len(answers) == 2
        assert all(a["instances"]["healthy"] >= 1 for a in answers.values())
        deregister(lb.url, "reg-a")
        assert wait_until(
            lambda: all(a["instances"]["healthy"] == 0 for a in by_worker(lb.url).values()),
            timeout=5,
        )
    finally:
        stub.close()


def test_a_killed_worker_is_replaced(lb: ServiceProcess) -> None:
    before = workers_of(lb)
    os.kill(before[0], signal.SIGKILL)
    assert wait_until(
        lambda: len(workers_of(lb)) == 2 and before[0] not in workers_of(lb), timeout=60
    ), lb.output()
    now = workers_of(lb)
    assert before[1] in now
    # The new worker serves: new connections reach it (once it listens).
    assert wait_until(lambda: set(by_worker(lb.url, tries=40)) == set(now), timeout=60)


def test_sigterm_drains_both_workers(redis: EmbeddedRedis) -> None:
    lb = ServiceProcess("lb", env=lb_env(redis, "drain")).start(timeout=90)
    slow = Stub(delay=2.0).start()
    try:
        register(lb.url, "slow", slow.url)
        assert wait_until(
            lambda: all(a["instances"]["healthy"] == 1 for a in by_worker(lb.url).values()),
            timeout=10,
        )
        pids = workers_of(lb)
        requests = 16
        with concurrent.futures.ThreadPoolExecutor(requests) as pool:
            futures = [
                pool.submit(lambda: httpx.get(lb.url + "/api/log", timeout=30).status_code)
                for _ in range(requests)
            ]
            assert wait_until(lambda: slow.in_flight == requests, timeout=10)
            per_worker = metric(scrape(lb.url), "aygolog_lb_worker_proxied_total")
            assert all(n > 0 for n in per_worker.values()), per_worker  # both have some
            assert lb.process is not None
            os.kill(lb.process.pid, signal.SIGTERM)  # the supervisor only
            codes = [f.result() for f in futures]
        assert codes == [200] * requests  # every in-flight request finished
        assert lb.process.wait(15) == 0
        assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
        with pytest.raises(httpx.ConnectError):
            httpx.get(lb.url + "/health", timeout=2)
    finally:
        slow.close()
        lb.close()


def test_a_second_load_balancer_on_the_port_is_refused(
    lb: ServiceProcess, redis: EmbeddedRedis
) -> None:
    other = ServiceProcess("lb", env=lb_env(redis, "workers"), port=lb.port).spawn()
    assert other.process is not None
    assert other.process.wait(60) == 1
    assert "in use" in other.output()
    other.close()


def test_workers_end_when_the_supervisor_is_killed(redis: EmbeddedRedis) -> None:
    lb = ServiceProcess("lb", env=lb_env(redis, "orphans")).start(timeout=90)
    pids = workers_of(lb)
    try:
        assert len(pids) == 2
        environ = Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
        found = [v for v in environ if v.startswith(WORKER_VARIABLE.encode() + b"=")]
        bus = Path(worker_info(found[0].split(b"=", 1)[1].decode()).bus_dir)
        assert bus.is_dir()
        assert lb.process is not None
        os.kill(lb.process.pid, signal.SIGKILL)  # the supervisor only, as a crash would
        lb.process.wait(10)
        # Each worker notices (the kernel's signal, or its watching thread), drains and exits;
        # the last one out removes the bus directory the supervisor could not.
        assert wait_until(lambda: not any(_running(pid) for pid in pids), timeout=15), (
            f"workers left behind: {[p for p in pids if _running(p)]}"
        )
        assert not bus.exists()
    finally:
        lb.close()
        for pid in pids:  # when the test failed: none left behind for the next ones
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
