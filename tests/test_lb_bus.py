"""The workers' bus in one process: two (or three) `WorkerBus`es over real UNIX datagram
sockets, each with its own pool, as two `aygolog lb` workers have. The same behaviour through
real worker processes is in test_lb_workers.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aygolog.balancing import make_strategy
from aygolog.lb.bus import WorkerBus, WorkerInfo
from aygolog.lb.health import HealthChecker, HealthCheckOptions
from aygolog.lb.pool import InstancePool, Upstream
from aygolog.lb.upstream import UpstreamFailure
from aygolog.metrics import Metrics
from aygolog.models import InstanceStatus, Registration, ServiceInstance
from aygolog.registry import InMemoryServiceRegistry
from lb_support import wait_for

REFUSED = UpstreamFailure.CONNECT_REFUSED


def _instance(name: str, port: int) -> ServiceInstance:
    now = datetime.now(UTC)
    return ServiceInstance(
        name=name, url=f"http://127.0.0.1:{port}", registered_at=now, last_heartbeat=now
    )


class Worker:
    """A pool, its metrics and its end of the bus."""

    def __init__(self, registry: InMemoryServiceRegistry, info: WorkerInfo) -> None:
        self.metrics = Metrics()
        self.pool = InstancePool(registry, make_strategy("round_robin"), metrics=self.metrics)
        self.bus = WorkerBus(info, self.pool, self.metrics)
        self.info = info

    async def start(self) -> Worker:
        self.bus.open()
        await self.pool.start()
        return self

    async def close(self) -> None:
        self.bus.close()
        await self.pool.aclose()


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[Worker]]:
    registry = InMemoryServiceRegistry()
    for name, port in (("a", 9001), ("b", 9002)):
        await registry.register(Registration(name=name, url=f"http://127.0.0.1:{port}"))
    group = [
        await Worker(registry, WorkerInfo(index=i, count=2, bus_dir=str(tmp_path), supervisor=1))
        .start()
        for i in range(2)
    ]  # fmt: skip
    yield group
    for worker in group:
        await worker.close()


def _status(worker: Worker, name: str) -> str:
    return next(v.status for v in worker.pool.views() if v.name == name)


async def test_an_ejection_in_one_worker_is_applied_by_the_other(workers: list[Worker]) -> None:
    first, second = workers
    first.pool.started("a")
    first.pool.finished("a", None, 0.01, error=REFUSED)
    assert _status(first, "a") == InstanceStatus.EJECTED.value

    async def seen() -> bool:
        return _status(second, "a") == InstanceStatus.EJECTED.value

    await wait_for(seen, within=2.0)
    assert second.pool.routable() == ["b"]
    # Counted once, by the worker that decided: the sum over the workers is the true count.
    assert first.metrics.snapshot()["aygolog_lb_ejections_total"] == [[["a"], 1.0]]
    assert second.metrics.snapshot()["aygolog_lb_ejections_total"] == []


async def test_the_other_workers_ejection_keeps_the_max_ejected_cap(
    workers: list[Worker],
) -> None:
    first, second = workers
    second.pool.started("b")
    second.pool.finished("b", None, 0.01, error=REFUSED)  # b ejected in the second
    assert second.pool.routable() == ["a"]
    await asyncio.sleep(0.2)
    first.pool.started("a")
    first.pool.finished("a", None, 0.01, error=REFUSED)  # a, in the first (b applied)
    await asyncio.sleep(0.3)
    # 50% of 2: one ejected at most, in each worker, whatever the other decided.
    for worker in workers:
        counts = worker.pool.counts()
        assert counts[InstanceStatus.EJECTED.value] == 1


async def test_probe_results_reach_every_worker_and_each_instance_has_one_prober(
    workers: list[Worker],
) -> None:
    owners = {name: [w.info.index for w in workers if w.info.owns(name)] for name in ("a", "b")}
    assert all(len(found) == 1 for found in owners.values())  # exactly one prober each
    probed: list[str] = []

    class Failing(HealthChecker):
        async def _probe(self, url: str, target: Upstream) -> bool:
            probed.append(target.name)
            return False

    for worker in workers:
        checker = Failing(
            worker.pool,
            HealthCheckOptions(interval=0),
            share=worker.info.owns,
            on_result=worker.bus.probed,
        )
        for _ in range(3):  # unhealthy_threshold
            await checker.probe_all()
        await checker.aclose()
    assert sorted(probed) == ["a"] * 3 + ["b"] * 3  # one probe per instance per round

    async def both_unhealthy_everywhere() -> bool:
        return all(
            _status(w, n) == InstanceStatus.UNHEALTHY.value for w in workers for n in ("a", "b")
        )

    await wait_for(both_unhealthy_everywhere, within=2.0)


async def test_registrations_heartbeats_and_deregistrations_reach_the_other_worker(
    workers: list[Worker],
) -> None:
    first, second = workers
    new = _instance("c", 9003)
    first.pool.observe(new, came_back=True)
    first.bus.observed(new, came_back=True)

    async def known() -> bool:
        return "c" in second.pool.routable()

    await wait_for(known, within=2.0)
    # A heartbeat heard by one worker while the registry says it expired keeps it alive in both.
    expired = _instance("c", 9003)
    expired.status = InstanceStatus.EXPIRED
    second.pool.replace([expired], keep={"a", "b"})
    assert "c" not in second.pool.routable()
    first.bus.heard("c")

    async def alive() -> bool:
        return "c" in second.pool.routable()

    await wait_for(alive, within=2.0)
    first.pool.remove("c")
    first.bus.removed("c")

    async def gone() -> bool:
        return "c" not in {v.name for v in second.pool.views()}

    await wait_for(gone, within=2.0)


async def test_a_restarted_worker_takes_the_others_verdicts(
    workers: list[Worker], tmp_path: Path
) -> None:
    first, _second = workers
    first.pool.started("a")
    first.pool.finished("a", None, 0.01, error=REFUSED)
    for _ in range(3):
        first.pool.record_probe("b", "http://127.0.0.1:9002", ok=False)
    # Worker 1 restarts while the registry cannot be read: it learns the instances and their
    # verdicts from worker 0.
    await _second.close()
    down = InMemoryServiceRegistry()

    async def unreadable() -> list[ServiceInstance]:
        from aygolog.errors import Unavailable

        raise Unavailable("registry down")

    down.instances = unreadable  # type: ignore[method-assign]
    restarted = Worker(down, WorkerInfo(index=1, count=2, bus_dir=str(tmp_path), supervisor=1))
    try:
        await restarted.start()
        restarted.bus.hello()

        async def synced() -> bool:
            return {v.name: v.status for v in restarted.pool.views()} == {
                "a": InstanceStatus.EJECTED.value,
                "b": InstanceStatus.UNHEALTHY.value,
            }

        await wait_for(synced, within=2.0)
    finally:
        await restarted.close()


async def test_metrics_are_summed_over_the_workers(workers: list[Worker]) -> None:
    for worker, served in zip(workers, (3, 5), strict=True):
        for _ in range(served):
            worker.pool.started("a")
            worker.pool.finished("a", 200, 0.002)
    first, second = workers
    others = await first.bus.gather_metrics()
    assert len(others) == 1
    text = first.metrics.render(others)
    assert 'aygolog_lb_requests_total{instance="a",status="200"} 8' in text
    assert 'aygolog_lb_request_seconds_count{instance="a"} 8' in text
    # A gauge of the shared view is the answering worker's own, not doubled.
    assert "aygolog_lb_healthy_instances 2\n" in text
    # A worker that is gone is left out after the wait, not waited for forever.
    await second.close()
    assert await first.bus.gather_metrics(wait=0.2) == []
    assert first.bus.reporting == 1
