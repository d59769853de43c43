"""The load balancer's control plane in-process: registration API, auth, listing, health,
metrics, and the instance pool's rules (strategy use, ejection, draining, health checks)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar.testing import transport as litestar_transport

from aygolog.balancing import RoundRobin, make_strategy
from aygolog.errors import NoHealthyInstance, Unavailable
from aygolog.lb import (
    HealthChecker,
    HealthCheckOptions,
    InstancePool,
    PoolOptions,
    create_load_balancer,
    lb_state,
    run_load_balancer,
)
from aygolog.lb.app import health_options_from, pool_options_from, proxy_config_from
from aygolog.lb.upstream import UpstreamFailure
from aygolog.models import InstanceStatus, Registration, RegistryEvent, ServiceInstance
from aygolog.registry import InMemoryServiceRegistry
from aygolog.settings import LoadBalancerSettings

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NO_PROBES = HealthCheckOptions(interval=0)


class Clock:
    """Seconds that move only when told to (monotonic for the pool, epoch for the registry)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def settings(**values: Any) -> LoadBalancerSettings:
    values.setdefault("registration_token", TOKEN)
    return LoadBalancerSettings(**values)


@asynccontextmanager
async def client_for(
    app: Litestar,
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.fixture(autouse=True)
def _calls_from_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Litestar's in-process test client calls from "testclient", which is no address and so
    outside every allowed network: make it 127.0.0.1, as a local instance's calls would be."""
    transport = litestar_transport.TestClientTransport
    parse = transport.parse_request

    def parse_request(self: Any, request: httpx.Request) -> dict[str, Any]:
        scope = parse(self, request)
        scope["client"] = ("127.0.0.1", 50000)
        return scope

    monkeypatch.setattr(transport, "parse_request", parse_request)


@pytest.fixture
def registry() -> InMemoryServiceRegistry:
    return InMemoryServiceRegistry()


@pytest.fixture
async def client(registry: InMemoryServiceRegistry) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_load_balancer(
        settings(strategy="round_robin"), registry=registry, health_options=NO_PROBES
    )
    async with client_for(app) as c:
        yield c


def reg(name: str, at: int, **more: Any) -> dict[str, Any]:
    return {"name": name, "url": f"http://127.0.0.1:{at}", **more}


# -- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"}],
    ids=["none", "wrong", "basic", "empty", "longer"],
)  # fmt: skip
async def test_registration_routes_need_the_token(
    client: AsyncTestClient[Litestar], headers: dict[str, str]
) -> None:
    calls = [
        client.post("/api/registration", json=reg("a", 5001), headers=headers),
        client.put("/api/registration/a/heartbeat", headers=headers),
        client.delete("/api/registration/a", headers=headers),
    ]
    for call in calls:
        response = await call
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        assert "error" in response.json()
    assert (await client.get("/api/registration/services")).json() == []


async def test_open_registration_needs_opt_in_and_warns(
    registry: InMemoryServiceRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="AYGOLOG_REGISTRATION_TOKEN"):
        LoadBalancerSettings(registration_token=None)
    with caplog.at_level(logging.WARNING, logger="aygolog.lb"):
        app = create_load_balancer(
            LoadBalancerSettings(registration_token=None, insecure_open_registration=True),
            registry=registry,
            health_options=NO_PROBES,
        )
        async with client_for(app) as c:
            assert (await c.post("/api/registration", json=reg("a", 5001))).status_code == 201
    assert any("REGISTRATION IS OPEN" in r.message for r in caplog.records)


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "a", "url": "file:///etc/passwd"}, "url"),
        ({"name": "a", "url": "http://user:pw@127.0.0.1:5001"}, "url"),
        ({"name": "a", "url": "http://127.0.0.1:5001/path"}, "url"),
        ({"name": "bad name!", "url": "http://127.0.0.1:5001"}, "name"),
        ({"name": "a", "url": "http://127.0.0.1:5001", "weight": 5000}, "weight"),
        ({"name": "a", "url": "http://127.0.0.1:5001", "weight": "x"}, "weight"),
        ({"url": "http://127.0.0.1:5001"}, "name"),
    ],
    ids=["file", "credentials", "path", "name", "weight-range", "weight-type", "no-name"],
)
async def test_bad_registration_is_422_naming_the_field(
    client: AsyncTestClient[Litestar], body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/registration", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["detail"]]
    assert (await client.get("/api/registration/services")).json() == []


async def test_malformed_json_is_400(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post(
        "/api/registration", content=b"{nope", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "malformed request body"


@asynccontextmanager
async def serving(app: Litestar, lb_settings: LoadBalancerSettings) -> AsyncIterator[str]:
    """The whole load balancer (data plane in front of `app`) on a free loopback port."""
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_load_balancer(lb_settings, app=app, stop=stop, started=port.set_result, grace=0.5)
    )
    try:
        yield f"http://127.0.0.1:{await asyncio.wait_for(port, 10)}"
    finally:
        stop.set()
        await task


async def test_allowed_networks_check_the_caller_and_the_url(
    registry: InMemoryServiceRegistry,
) -> None:
    # Over real sockets, so that the caller's address is 127.0.0.1.
    lb_settings = settings(host="127.0.0.1", port=0)
    inside = {"name": "b", "url": "http://127.0.0.1:5001"}
    app = create_load_balancer(
        lb_settings, registry=registry, health_options=NO_PROBES, allowed_networks=["10.0.0.0/8"]
    )
    async with serving(app, lb_settings) as url, httpx.AsyncClient(base_url=url) as c:
        calls = [
            c.post("/api/registration", json=inside, headers=AUTH),
            c.put("/api/registration/b/heartbeat", headers=AUTH),
            c.delete("/api/registration/b", headers=AUTH),
            c.post("/api/registration", json=inside),  # the network is checked before the token
        ]
        for call in calls:
            response = await call
            assert response.status_code == 403, response.text
            assert response.json()["error"] == (
                "127.0.0.1 is outside the networks allowed to register"
                " (AYGOLOG_REGISTRATION_ALLOWED_NETWORKS)"
            )
        assert (await c.get("/api/registration/services")).json() == []  # reading stays open

    # From settings: the caller is inside; the registered URL must be too.
    lb_settings = settings(
        host="127.0.0.1", port=0, registration_allowed_networks="10.0.0.0/8, 127.0.0.0/8, ::1"
    )
    app = create_load_balancer(lb_settings, registry=registry, health_options=NO_PROBES)
    async with serving(app, lb_settings) as url, httpx.AsyncClient(base_url=url) as c:
        outside = {"name": "a", "url": "http://192.168.1.5:5001"}
        refused = await c.post("/api/registration", json=outside, headers=AUTH)
        assert refused.status_code == 403
        assert "'192.168.1.5' (192.168.1.5) is outside the networks" in refused.json()["error"]
        named = {"name": "a", "url": "http://localhost:5001"}  # a name resolving inside: fine
        assert (await c.post("/api/registration", json=named, headers=AUTH)).status_code == 201
        assert (await c.post("/api/registration", json=inside, headers=AUTH)).status_code == 201
        other = {"name": "c", "url": "http://10.1.2.3:5001"}
        assert (await c.post("/api/registration", json=other, headers=AUTH)).status_code == 201
        names = [s["name"] for s in (await c.get("/api/registration/services")).json()]
        assert names == ["a", "b", "c"]
        assert (await c.put("/api/registration/b/heartbeat", headers=AUTH)).status_code == 200
        assert (await c.delete("/api/registration/b", headers=AUTH)).status_code == 204


def test_settings_reach_the_pool_the_health_checks_and_the_proxy() -> None:
    lb_settings = settings(
        registry_poll_interval=0.5,
        ejection_base=2,
        ejection_max=20,
        max_ejected_percent=30,
        ejection_consecutive_failures=5,
        healthy_threshold=4,
        unhealthy_threshold=5,
        health_check_interval=3,
        health_check_timeout=0.5,
        max_body_bytes=1000,
        max_retries=1,
        retry_budget_percent=10,
        retry_budget_min_per_second=1,
        retry_budget_window=30,
        api_keys="k1:read",
        cors_origins="http://ui.example",
    )
    assert pool_options_from(lb_settings) == PoolOptions(
        poll_interval=0.5,
        ejection_base=2.0,
        ejection_max=20.0,
        max_ejected_fraction=0.3,
        failures_to_eject=5,
        healthy_threshold=4,
        unhealthy_threshold=5,
    )
    assert health_options_from(lb_settings) == HealthCheckOptions(interval=3.0, timeout=0.5)
    config = proxy_config_from(lb_settings, grace=2)
    assert (config.max_body_size, config.max_retries, config.shutdown_timeout) == (1000, 1, 2)
    assert (config.retry_ratio, config.retry_min_per_second, config.retry_window) == (0.1, 1, 30)
    assert config.api_keys == {"k1": "read"}
    assert config.cors_origins == ("http://ui.example",)
    defaults = proxy_config_from(settings())
    assert (defaults.max_retries, defaults.retry_ratio, defaults.retry_window) == (2, 0.2, 10.0)
    assert defaults.max_body_size == 10 * 1024 * 1024
    assert not defaults.api_keys
    assert defaults.cors_origins == ("*",)


async def test_the_app_takes_its_pool_and_health_options_from_settings(
    registry: InMemoryServiceRegistry,
) -> None:
    lb_settings = settings(ejection_base=7, ejection_max=70, health_check_interval=0)
    async with client_for(create_load_balancer(lb_settings, registry=registry)) as c:
        lb = lb_state(c.app)
        assert (lb.pool.options.ejection_base, lb.pool.options.ejection_max) == (7.0, 70.0)
        assert lb.health.options.interval == 0
        await c.post("/api/registration", json=reg("a", 5001), headers=AUTH)
        await c.post("/api/registration", json=reg("b", 5002), headers=AUTH)
        refused(lb.pool, "a")
        (listed,) = [
            s for s in (await c.get("/api/registration/services")).json() if s["name"] == "a"
        ]
        assert listed["status"] == "ejected"
        until = datetime.fromisoformat(listed["ejected_until"])
        assert 6 < (until - datetime.now(UTC)).total_seconds() <= 7


# -- the registration life cycle -----------------------------------------------------------


async def test_register_heartbeat_deregister(
    client: AsyncTestClient[Litestar], registry: InMemoryServiceRegistry
) -> None:
    first = await client.post("/api/registration", json=reg("api-1", 5001), headers=AUTH)
    assert first.status_code == 201, first.text
    assert first.json()["name"] == "api-1"
    assert first.json()["status"] == "healthy"
    again = await client.post("/api/registration", json=reg("api-1", 5001, weight=3), headers=AUTH)
    assert again.status_code == 200
    assert (await registry.get("api-1")) is not None

    beat = await client.put("/api/registration/api-1/heartbeat", headers=AUTH)
    assert beat.status_code == 200
    assert beat.json()["weight"] == 3
    unknown = await client.put("/api/registration/nobody/heartbeat", headers=AUTH)
    assert unknown.status_code == 404
    assert "nobody" in unknown.json()["error"]

    gone = await client.delete("/api/registration/api-1", headers=AUTH)
    assert gone.status_code == 204
    assert await registry.get("api-1") is None
    assert (await client.get("/api/registration/services")).json() == []
    assert (await client.delete("/api/registration/api-1", headers=AUTH)).status_code == 404
    assert (await client.put("/api/registration/api-1/heartbeat", headers=AUTH)).status_code == 404


async def test_services_listing_fields(client: AsyncTestClient[Litestar]) -> None:
    body = reg("api-1", 5001, weight=2, ip="127.0.0.1", port=5001, metadata={"zone": "a"})
    await client.post("/api/registration", json=body, headers=AUTH)
    await client.post("/api/registration", json=reg("api-2", 5002), headers=AUTH)
    pool = lb_state(client.app).pool
    target = pool.pick()
    pool.started(target.name)
    pool.finished(target.name, None, 0.01, UpstreamFailure.CONNECT_REFUSED)

    listed = (await client.get("/api/registration/services")).json()
    assert [s["name"] for s in listed] == ["api-1", "api-2"]
    one = listed[0]
    assert one["url"] == "http://127.0.0.1:5001"
    assert one["weight"] == 2
    assert one["metadata"] == {"zone": "a"}
    assert 0 <= one["heartbeat_age"] < 5
    assert one["status"] == "ejected"  # refused: ejected (1 of 2 is within the 50% cap)
    assert one["ejected_until"] is not None
    assert one["served"] == 1
    assert one["in_flight"] == 0
    assert one["recent_failures"] == 1
    assert one["ejections"] == 1
    assert one["health_check"] == "passing"
    assert listed[1]["status"] == "healthy"
    assert listed[1]["ejected_until"] is None
    for key in ("last_heartbeat", "registered_at", "ip", "port"):
        assert key in one


async def test_health_and_metrics(client: AsyncTestClient[Litestar]) -> None:
    empty = await client.get("/health")
    assert empty.status_code == 200
    assert empty.json()["status"] == "no_healthy_instances"
    await client.post("/api/registration", json=reg("api-1", 5001), headers=AUTH)
    health = (await client.get("/health")).json()
    assert health["status"] == "ok"
    assert health["healthy_instances"] == 1
    assert health["instances"]["healthy"] == 1
    assert health["registry"]["ok"] is True
    assert health["strategy"] == "round_robin"

    pool = lb_state(client.app).pool
    pool.started("api-1")
    pool.finished("api-1", 200, 0.003, None)
    pool.pick(exclude={"other"})
    text = (await client.get("/metrics")).text
    assert 'aygolog_lb_requests_total{instance="api-1",status="200"} 1' in text
    assert 'aygolog_lb_request_seconds_count{instance="api-1"} 1' in text
    assert "aygolog_lb_retries_total 1" in text
    assert "aygolog_lb_healthy_instances 1" in text
    assert "# TYPE aygolog_lb_ejections_total counter" in text


async def test_unknown_route_is_json_404(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/nothing-here")
    assert response.status_code == 404
    assert "error" in response.json()


# -- the pool ---------------------------------------------------------------------------------


def instance(name: str, port: int = 5000, weight: int = 1) -> ServiceInstance:

    now = datetime.now(UTC)
    return ServiceInstance(
        name=name,
        url=f"http://127.0.0.1:{port}",
        registered_at=now,
        last_heartbeat=now,
        weight=weight,
    )


def make_pool(
    n: int, *, strategy: str = "round_robin", clock: Callable[[], float] | None = None, **opts: Any
) -> InstancePool:
    pool = InstancePool(
        InMemoryServiceRegistry(),
        make_strategy(strategy),
        options=PoolOptions(**opts),
        clock=clock or Clock(),
    )
    pool.replace([instance(f"i{k}", 5000 + k) for k in range(n)])
    return pool


def fail(pool: InstancePool, name: str, status: int | None = 502, error: object = None) -> None:
    pool.started(name)
    pool.finished(name, status, 0.001, error)


def refused(pool: InstancePool, name: str) -> None:
    """A connect failure: ejects at once."""
    fail(pool, name, None, UpstreamFailure.CONNECT_REFUSED)


def test_pick_uses_the_strategy_over_routable_instances() -> None:
    pool = make_pool(3)
    picks = [pool.pick().name for _ in range(30)]
    assert {name: picks.count(name) for name in set(picks)} == {"i0": 10, "i1": 10, "i2": 10}
    target = pool.pick()
    assert (target.host, target.port) == ("127.0.0.1", 5000 + int(target.name[1]))
    for _ in range(10):
        assert pool.pick(exclude={"i0", "i1"}).name == "i2"
    with pytest.raises(NoHealthyInstance):
        pool.pick(exclude={"i0", "i1", "i2"})
    with pytest.raises(NoHealthyInstance):
        make_pool(0).pick()


def test_least_outstanding_sees_started_and_finished() -> None:
    pool = make_pool(2, strategy="least_outstanding")
    pool.started("i0")
    assert [pool.pick().name for _ in range(5)] == ["i1"] * 5
    pool.finished("i0", 200, 0.01)
    pool.started("i1")
    assert pool.pick().name == "i0"


def test_weight_zero_drains() -> None:
    pool = make_pool(0)
    pool.replace([instance("a", 1), instance("b", 2, weight=0)])
    assert {pool.pick().name for _ in range(10)} == {"a"}
    assert {v.name: v.status for v in pool.views()} == {"a": "healthy", "b": "draining"}


def test_ejection_doubles_on_repeats_and_resets() -> None:
    clock = Clock()
    pool = make_pool(4, clock=clock)
    refused(pool, "i0")
    assert "i0" not in pool.routable()
    view = {v.name: v for v in pool.views()}["i0"]
    assert view.status == "ejected"
    clock.now += 4.9
    assert "i0" not in [pool.pick().name for _ in range(8)]
    clock.now += 0.2  # 5 s: back
    assert "i0" in [pool.pick().name for _ in range(4)]
    refused(pool, "i0")  # again soon after: 10 s
    clock.now += 9.9
    assert "i0" not in pool.routable()
    clock.now += 0.2
    assert "i0" in pool.routable()
    refused(pool, "i0")  # 20 s
    clock.now += 19.9
    assert "i0" not in pool.routable()
    clock.now += 0.2 + 61  # back, and well behaved for longer than ejection_reset
    refused(pool, "i0")  # the base again
    clock.now += 5.1
    assert "i0" in pool.routable()
    assert {v.name: v.ejections for v in pool.views()}["i0"] == 4


def test_at_most_half_ejected_even_when_all_fail() -> None:
    clock = Clock()
    pool = make_pool(4, clock=clock)
    refused(pool, "i0")
    refused(pool, "i1")
    refused(pool, "i2")  # a third of four would be over 50%: stays in
    assert sorted(pool.routable()) == ["i2", "i3"]
    for _ in range(5):  # every live instance failing: the cap still holds
        refused(pool, "i3")
        refused(pool, "i2")
    assert sorted(pool.routable()) == ["i2", "i3"]
    assert {pool.pick().name for _ in range(4)} == {"i2", "i3"}
    clock.now += 5.1
    assert sorted(pool.routable()) == ["i0", "i1", "i2", "i3"]


def test_one_success_clears_the_failure_streak() -> None:
    pool = make_pool(2, failures_to_eject=3)
    fail(pool, "i0")
    fail(pool, "i0")
    pool.started("i0")
    pool.finished("i0", 200, 0.01)
    fail(pool, "i0")
    assert "i0" in pool.routable()
    fail(pool, "i0")
    fail(pool, "i0")
    assert "i0" not in pool.routable()


def test_single_instance_may_be_ejected_and_still_gets_requests_in_panic() -> None:
    pool = make_pool(1)
    for _ in range(3):
        fail(pool, "i0", None, UpstreamFailure.RESET)
    assert pool.routable() == []
    assert pool.in_panic()
    assert pool.pick().name == "i0"


def test_deregistered_instance_gets_nothing_new_but_drains() -> None:
    pool = make_pool(2)
    pool.started("i0")
    pool.remove("i0")
    assert {pool.pick().name for _ in range(6)} == {"i1"}
    assert {v.name: v.status for v in pool.views()}["i0"] == "draining"
    pool.finished("i0", 200, 0.5)
    assert [v.name for v in pool.views()] == ["i1"]
    pool.remove("i1")  # nothing in flight: forgotten at once
    assert pool.views() == []


def test_active_health_thresholds() -> None:
    pool = make_pool(2)
    url = "http://127.0.0.1:5000"
    for _ in range(2):
        pool.record_probe("i0", url, False)
    assert "i0" in pool.routable()
    pool.record_probe("i0", url, False)
    assert "i0" not in pool.routable()
    assert {v.name: v.status for v in pool.views()}["i0"] == InstanceStatus.UNHEALTHY.value
    assert pool.counts()["unhealthy"] == 1
    view = next(v for v in pool.views() if v.name == "i0")
    assert (view.health_check, view.ejected_until) == ("failing", None)  # failing, not ejected
    pool.record_probe("i0", "http://elsewhere:1", True)  # a stale probe of an old address
    pool.record_probe("i0", url, True)
    assert "i0" not in pool.routable()
    pool.record_probe("i0", url, True)
    assert "i0" in pool.routable()


async def test_health_checker_probes_each_live_instance() -> None:
    pool = make_pool(2)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200 if request.url.port == 5000 else 503)

    checker = HealthChecker(pool, HealthCheckOptions(), transport=httpx.MockTransport(handler))
    for _ in range(3):
        await checker.probe_all()
    await checker.aclose()
    assert sorted(set(seen)) == ["http://127.0.0.1:5000/health", "http://127.0.0.1:5001/health"]
    assert pool.routable() == ["i0"]


# -- following the registry ------------------------------------------------------------------


async def wait_until(check: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_pool_follows_registry_events_and_expiry() -> None:
    wall = Clock(time.time())
    registry = InMemoryServiceRegistry(ttl=timedelta(seconds=6), clock=wall)
    await registry.register(Registration(name="old", url="http://127.0.0.1:5000"))
    pool = InstancePool(registry, RoundRobin(), options=PoolOptions(poll_interval=0.02))
    await pool.start()
    try:
        assert pool.routable() == ["old"]
        await registry.register(Registration(name="new", url="http://127.0.0.1:5001"))
        await wait_until(lambda: sorted(pool.routable()) == ["new", "old"])
        await registry.deregister("old")
        await wait_until(lambda: pool.routable() == ["new"])
        wall.now += 7  # the poll's sweep() announces the expiry
        await wait_until(lambda: pool.routable() == [])
        assert [v.status for v in pool.views()] == ["expired"]
        await registry.heartbeat("new")  # it came back
        await wait_until(lambda: pool.routable() == ["new"])
    finally:
        await pool.aclose()


class FlakyRegistry(InMemoryServiceRegistry):
    """A registry whose watch and reads fail a few times, as when Redis restarts."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def _maybe_fail(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise Unavailable("Redis is restarting")

    async def instances(self) -> list[ServiceInstance]:
        self._maybe_fail()
        return await super().instances()

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[RegistryEvent]]:
        self._maybe_fail()
        async with super().watch() as events:
            yield events


async def test_pool_rewatches_after_the_registry_fails() -> None:
    registry = FlakyRegistry(failures=3)
    await registry.register(Registration(name="a", url="http://127.0.0.1:5000"))
    pool = InstancePool(registry, RoundRobin(), options=PoolOptions(poll_interval=60))
    await pool.start()
    try:
        await wait_until(lambda: pool.routable() == ["a"])
        assert pool.registry_error is None
        await registry.register(Registration(name="b", url="http://127.0.0.1:5001"))
        await wait_until(lambda: sorted(pool.routable()) == ["a", "b"])
    finally:
        await pool.aclose()


class DownRegistry(InMemoryServiceRegistry):
    """A registry whose every call fails, as when Redis is down."""

    async def register(self, registration: Registration) -> ServiceInstance:
        raise Unavailable("Redis: connection refused", retry_after=1.0)

    async def instances(self) -> list[ServiceInstance]:
        raise Unavailable("Redis: connection refused", retry_after=1.0)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[RegistryEvent]]:
        raise Unavailable("Redis: connection refused", retry_after=1.0)
        yield  # type: ignore[unreachable]  # makes this an async generator


async def test_registry_down_gives_503_with_retry_after() -> None:
    pool_options = PoolOptions(poll_interval=0.05)
    app = create_load_balancer(
        settings(), registry=DownRegistry(), health_options=NO_PROBES, pool_options=pool_options
    )
    lb_task_start = time.monotonic()
    async with client_for(app) as c:
        assert time.monotonic() - lb_task_start < 10
        response = await c.post("/api/registration", json=reg("a", 5001), headers=AUTH)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "Redis" in response.json()["error"]
        health = await c.get("/health")
        assert health.status_code == 503
        assert health.json()["registry"]["ok"] is False
