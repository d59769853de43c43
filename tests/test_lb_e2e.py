"""The load balancer end to end: real `aygolog lb` and `aygolog api` processes on one real Redis.

The instances register themselves with the LB (the seed's environment names plus the token) and
heartbeat every 0.5 s; the LBs count an instance expired after 1.5 s without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from aygolog.embedded import EmbeddedRedis, free_port
from support import ServiceProcess

pytestmark = pytest.mark.timeout(90)


TOKEN = "e2e-registration-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEARTBEAT = 0.5
NAMES = ("api-1", "api-2", "api-3")


@dataclass
class Cluster:
    """One Redis prefix, one LB, three Log API instances registered with it."""

    redis_url: str
    prefix: str
    lb: ServiceProcess
    apis: dict[str, ServiceProcess] = field(default_factory=dict)

    def lb_env(self, **more: str) -> dict[str, str]:
        return {
            "AYGOLOG_REDIS_URL": self.redis_url,
            "AYGOLOG_REDIS_PREFIX": self.prefix,
            "AYGOLOG_REGISTRATION_TOKEN": TOKEN,
            "AYGOLOG_STRATEGY": "round_robin",
            "AYGOLOG_HEARTBEAT_TTL": str(3 * HEARTBEAT),
            **more,
        }

    def api_env(self, name: str) -> dict[str, str]:
        return {
            "ConnectionStrings__Redis": self.redis_url,
            "AYGOLOG_REDIS_PREFIX": self.prefix,
            "ServiceRegistration__ServiceName": name,
            "ServiceRegistration__LoadBalancerUrl": f"127.0.0.1:{self.lb.port}",
            "AYGOLOG_REGISTRATION_TOKEN": TOKEN,
            "AYGOLOG_HEARTBEAT_INTERVAL": str(HEARTBEAT),
        }

    def start_apis(self, names: tuple[str, ...]) -> None:
        """Start these instances at once (in parallel: each takes about a second)."""
        for name in names:
            old = self.apis.get(name)
            if old is not None:
                old.close()
            self.apis[name] = ServiceProcess("api", env=self.api_env(name))
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda n: self.apis[n].start(), names))

    def services(self, lb: ServiceProcess | None = None) -> dict[str, dict[str, Any]]:
        listed = httpx.get((lb or self.lb).url + "/api/registration/services", timeout=2).json()
        return {s["name"]: s for s in listed}

    def wait_healthy(self, names: tuple[str, ...] = NAMES, within: float = 15.0) -> float:
        """Wait until the LB routes to exactly these instances; returns the seconds it took."""
        started = time.monotonic()
        while True:
            listed = self.services()
            healthy = {n for n, s in listed.items() if s["status"] == "healthy"}
            if healthy == set(names):
                return time.monotonic() - started
            assert time.monotonic() - started < within, f"not healthy in time: {listed}"
            time.sleep(0.02)

    def ensure(self) -> None:
        """Bring the cluster back to three healthy instances after a test broke some."""
        dead = tuple(n for n in NAMES if not running(self.apis[n]))
        if dead:
            self.start_apis(dead)
        self.wait_healthy()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the LB's series of `name` whose labels include `labels`."""
        total = 0.0
        for line in httpx.get(self.lb.url + "/metrics").text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total


def running(service: ServiceProcess) -> bool:
    return service.process is not None and service.process.poll() is None


@pytest.fixture(scope="module")
def cluster(redis_server: EmbeddedRedis) -> Iterator[Cluster]:
    prefix = f"lbe2e{uuid.uuid4().hex[:8]}"
    lb = ServiceProcess("lb", env={})
    c = Cluster(redis_url=redis_server.url, prefix=prefix, lb=lb)
    lb.env.update(c.lb_env())
    lb.start()
    try:
        c.start_apis(NAMES)
        c.wait_healthy()
        yield c
    finally:
        for api in c.apis.values():
            api.close()
        c.lb.close()


@pytest.fixture
def healthy(cluster: Cluster) -> Cluster:
    cluster.ensure()
    return cluster


# -- the registration API over HTTP ---------------------------------------------------------


def test_instances_register_themselves(healthy: Cluster) -> None:
    listed = healthy.services()
    assert sorted(listed) == list(NAMES)
    for name, s in listed.items():
        assert s["url"] == healthy.apis[name].url
        assert s["heartbeat_age"] < 1.6
        assert s["health_check"] == "passing"
    health = httpx.get(healthy.lb.url + "/health").json()
    assert health["status"] == "ok"
    assert health["healthy_instances"] == 3


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, {"name": "x", "url": "http://127.0.0.1:1"}, 401),
        ({"Authorization": "Bearer nope"}, {"name": "x", "url": "http://127.0.0.1:1"}, 401),
        (AUTH, {"name": "x", "url": "file:///etc/passwd"}, 422),
        (AUTH, {"name": "x", "url": "http://admin:pw@127.0.0.1:1"}, 422),
    ],
    ids=["no-token", "wrong-token", "file-url", "credentials"],
)
def test_registration_is_refused(
    cluster: Cluster, headers: dict[str, str], body: dict[str, str], status: int
) -> None:
    response = httpx.post(cluster.lb.url + "/api/registration", json=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    else:
        assert response.json()["detail"][0]["field"] == "url"
    assert "x" not in cluster.services()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254:80", "link-local address (cloud metadata services live there)"),
        ("http://[::ffff:169.254.169.254]:80", "link-local address"),
        ("http://0.0.0.0:8080", "unspecified address"),
        ("http://8.8.8.8:8080", "outside the networks allowed to register"),
    ],
    ids=["metadata", "metadata-v6-mapped", "unspecified", "public"],
)
def test_registration_of_metadata_and_public_hosts_is_refused_by_default(
    cluster: Cluster, url: str, reason: str
) -> None:
    response = httpx.post(
        cluster.lb.url + "/api/registration", json={"name": "ssrf", "url": url}, headers=AUTH
    )
    assert response.status_code == 403, response.text
    assert reason in response.json()["error"]
    assert "ssrf" not in cluster.services()
    # The instances registered with their URL; the LB connects to the address it checked.
    assert {s["ip"] for s in cluster.services().values()} == {"127.0.0.1"}


def test_lb_refuses_to_start_without_a_token(cluster: Cluster) -> None:
    env = {k: v for k, v in cluster.lb_env().items() if k != "AYGOLOG_REGISTRATION_TOKEN"}
    env = {**{k: v for k, v in os.environ.items() if k != "AYGOLOG_REGISTRATION_TOKEN"}, **env}
    done = subprocess.run(
        [sys.executable, "-m", "aygolog", "lb", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 1
    assert "AYGOLOG_REGISTRATION_TOKEN" in done.stderr


def test_api_keys_cors_and_allowed_networks_from_the_environment(healthy: Cluster) -> None:
    origin = "http://ui.example:5173"
    env = healthy.lb_env(
        AYGOLOG_API_KEYS="e2e-reader:read, e2e-writer:write",
        AYGOLOG_CORS_ORIGINS=origin,
        AYGOLOG_REGISTRATION_ALLOWED_NETWORKS="10.0.0.0/8",  # not 127.0.0.1, where we call from
    )
    other = ServiceProcess("lb", env=env).start()
    try:
        with httpx.Client(base_url=other.url, timeout=5) as client:
            missing = client.get("/api/log", headers={"Origin": origin})
            assert missing.status_code == 401, missing.text
            assert missing.json()["error"].startswith("an API key is needed")
            assert missing.headers["Access-Control-Allow-Origin"] == origin
            read = client.get("/api/log", headers={"Authorization": "Bearer e2e-reader"})
            assert read.status_code == 200, read.text
            assert read.headers["X-Served-By"] in NAMES
            body = {"message": "with a key", "service": "keys"}
            refused = client.post("/api/log", json=body, headers={"X-Api-Key": "e2e-reader"})
            assert refused.status_code == 403
            written = client.post(
                "/api/log", json=body, headers={"X-Api-Key": "e2e-writer", "Origin": origin}
            )
            assert written.status_code == 201, written.text
            assert written.headers["Access-Control-Allow-Origin"] == origin
            preflight = client.options(
                "/api/log",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type,x-api-key",
                },
            )
            assert preflight.status_code == 204
            assert preflight.headers["Access-Control-Allow-Origin"] == origin
            assert preflight.headers["Access-Control-Allow-Headers"] == "content-type,x-api-key"
            # The registration API's listing and /health need no API key.
            assert client.get("/api/registration/services").status_code == 200
            assert client.get("/health").status_code == 200
            # Registering from outside the allowed networks: 403, even with the token.
            body = {"name": "intruder", "url": "http://10.0.0.9:8080"}
            outside = client.post("/api/registration", json=body, headers=AUTH)
            assert outside.status_code == 403, outside.text
            assert "outside the networks allowed to register" in outside.json()["error"]
            assert "intruder" not in healthy.services(other)
    finally:
        other.close()


# -- several load balancers, restarts ------------------------------------------------------


def test_two_lbs_on_one_redis_see_a_new_instance_within_100ms(healthy: Cluster) -> None:
    other = ServiceProcess("lb", env=healthy.lb_env()).start()
    try:
        assert sorted(healthy.services(other)) == list(NAMES)
        borrowed = healthy.apis["api-1"].url  # a real instance, so health probes pass
        body = {"name": "api-extra", "url": borrowed}

        async def watch_both() -> list[float]:
            async with httpx.AsyncClient(timeout=2) as client:

                async def seen_on(lb: ServiceProcess, since: float) -> float:
                    while True:
                        listed = (await client.get(lb.url + "/api/registration/services")).json()
                        if any(s["name"] == "api-extra" for s in listed):
                            return time.monotonic() - since
                        await asyncio.sleep(0.002)

                # Registered through the first LB; both LBs must see it.
                started = time.monotonic()
                response = await client.post(
                    healthy.lb.url + "/api/registration", json=body, headers=AUTH
                )
                assert response.status_code == 201, response.text
                registered = time.monotonic()
                return [
                    registered - started,
                    *await asyncio.wait_for(
                        asyncio.gather(seen_on(healthy.lb, registered), seen_on(other, registered)),
                        5,
                    ),
                ]

        call, lb1, lb2 = asyncio.run(watch_both())
        print(f"\nregistration answered in {call * 1000:.1f} ms; then the new instance was listed "
              f"by LB1 after {lb1 * 1000:.1f} ms, by LB2 after {lb2 * 1000:.1f} ms")  # fmt: skip
        assert max(lb1, lb2) < 0.1
        # And the other way round: a deregistration through the second LB.
        gone = httpx.delete(other.url + "/api/registration/api-extra", headers=AUTH)
        assert gone.status_code == 204
        deadline = time.monotonic() + 0.1
        while "api-extra" in healthy.services():
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        other.close()
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(healthy.lb.url + "/api/registration/api-extra", headers=AUTH)


def test_lb_restart_keeps_the_instances(healthy: Cluster) -> None:
    port = healthy.lb.port
    stopping = time.monotonic()
    assert healthy.lb.terminate(timeout=6) == 0
    stopped_in = time.monotonic() - stopping
    assert stopped_in < 5  # SIGTERM: a graceful stop within 5 s
    assert "Traceback" not in healthy.lb.output()
    lb = ServiceProcess("lb", env=healthy.lb_env(), port=port)
    healthy.lb.close()
    healthy.lb = lb
    lb.start()
    took = healthy.wait_healthy(within=2 * HEARTBEAT + 1)
    print(f"\nthe LB stopped {stopped_in * 1000:.0f} ms after SIGTERM; restarted, all 3 "
          f"instances were routable {took * 1000:.0f} ms after its /health answered")  # fmt: skip
    assert took <= 2 * HEARTBEAT


def test_lost_registry_state_is_rebuilt_within_two_heartbeats(healthy: Cluster) -> None:
    # Redis lost the registry (flushed, failed over without persistence): each instance's next
    # heartbeat gets a 404 and it registers again at once.
    client = redis.Redis.from_url(healthy.redis_url)
    tag = "{" + healthy.prefix + "}"
    try:
        client.delete(f"{tag}:services", f"{tag}:heartbeats", f"{tag}:expired")
        started = time.monotonic()
        while client.hlen(f"{tag}:services") < len(NAMES):
            assert time.monotonic() - started < 5, client.hkeys(f"{tag}:services")
            time.sleep(0.005)
        took = time.monotonic() - started
    finally:
        client.close()
    print(f"\nregistry flushed: all 3 registered again after {took * 1000:.0f} ms")
    assert took <= 2 * HEARTBEAT
    healthy.wait_healthy(within=2)


# -- the data plane -------------------------------------------------------------------------------


def test_round_robin_spreads_30_gets_evenly(healthy: Cluster) -> None:
    served: Counter[str] = Counter()
    with httpx.Client(base_url=healthy.lb.url, timeout=5) as client:
        for _ in range(30):
            response = client.get("/api/log", params={"limit": 1})
            assert response.status_code == 200, response.text
            served[response.headers["X-Served-By"]] += 1
    print(f"\n30 GETs of /api/log under round robin: {dict(sorted(served.items()))}")
    assert served == dict.fromkeys(NAMES, 10)


@dataclass
class Load:
    """The outcome of `run_load`."""

    tag: str
    posts: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


async def run_load(
    url: str,
    *,
    total: int = 2000,
    clients: int = 8,
    actions: dict[int, Callable[[], None]] | None = None,
) -> Load:
    """`total` requests from `clients` concurrent clients: GET /api/log, and POST /api/logs with
    an Idempotency-Key, alternately. `actions[i]` runs just before request i is sent."""
    load = Load(tag=f"load-{uuid.uuid4().hex[:8]}")
    actions = actions or {}
    sequence = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:

        async def one(i: int) -> httpx.Response:
            if i % 2 == 0:
                return await client.get("/api/log", params={"limit": 5})
            load.posts += 1
            return await client.post(
                "/api/logs",
                json=[{"message": f"{load.tag} {i}", "service": load.tag}],
                headers={"Idempotency-Key": f"{load.tag}-{i}"},
            )

        async def worker() -> None:
            for i in sequence:
                if i in actions:
                    actions[i]()
                try:
                    response = await one(i)
                except httpx.HTTPError as exc:
                    load.failures.append(f"#{i}: {type(exc).__name__}: {exc}")
                    continue
                if response.is_success:
                    load.ok += 1
                    load.served_by[response.headers.get("X-Served-By", "?")] += 1
                else:
                    load.failures.append(f"#{i}: {response.status_code} {response.text[:200]}")

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        load.seconds = time.monotonic() - started
    return load


def stored(cluster: Cluster, service: str) -> int:
    """How many entries of `service` were stored (through any instance)."""
    api = next(a for a in cluster.apis.values() if running(a))
    count: int = httpx.get(api.url + "/api/logs/stats").json()["by_service"].get(service, 0)
    return count


class EjectionWatch:
    """Polls the LB's listing in a thread until `name` is no longer healthy, then reads how many
    requests the LB has sent it so far (its `aygolog_lb_requests_total`, failed ones included)."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.killed_at: float | None = None
        self.out_after: float | None = None
        self.sent_before: float | None = None
        self.status: str | None = None
        self._pool = ThreadPoolExecutor(1)
        self._done = self._pool.submit(self._run)

    def _run(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = self.cluster.services().get(self.name)
            status = None if state is None else state["status"]
            if self.killed_at is not None and status != "healthy":
                self.out_after = time.monotonic() - self.killed_at
                self.status = status
                self.sent_before = self.cluster.metric(
                    "aygolog_lb_requests_total", instance=self.name
                )
                return
            time.sleep(0.005)

    def result(self) -> None:
        self._done.result(timeout=25)
        self._pool.shutdown()


def test_kill_9_under_load_fails_nothing(healthy: Cluster) -> None:
    victim = healthy.apis["api-2"]
    watch = EjectionWatch(healthy, "api-2")

    def kill() -> None:
        victim.kill()  # SIGKILL to its process group: no deregistration, no goodbye
        watch.killed_at = time.monotonic()

    load = asyncio.run(run_load(healthy.lb.url, actions={400: kill}))
    watch.result()
    sent_after = healthy.metric("aygolog_lb_requests_total", instance="api-2") - (
        watch.sent_before or 0
    )
    failed_attempts = healthy.metric("aygolog_lb_requests_total", instance="api-2", status="0")
    retries = healthy.metric("aygolog_lb_retries_total")
    print(f"\nkill -9 of api-2 at request 400 of 2000 (8 clients, {load.seconds:.2f} s, "
          f"{2000 / load.seconds:.0f} req/s): {len(load.failures)} failed; served by "
          f"{dict(sorted(load.served_by.items()))}; out of rotation ({watch.status}) "
          f"{(watch.out_after or 0) * 1000:.0f} ms after the kill; attempts that reached the dead "
          f"instance: {failed_attempts:.0f}, retried: {retries:.0f}; sent to it after its "
          f"ejection: {sent_after:.0f}")  # fmt: skip
    assert load.failures == []
    assert load.ok == 2000
    assert watch.status in ("ejected", "expired", "unhealthy")
    assert sent_after == 0
    assert stored(healthy, load.tag) == load.posts  # each POST stored exactly once


def test_sigterm_under_load_fails_nothing(healthy: Cluster) -> None:
    victim = healthy.apis["api-3"]

    def terminate() -> None:
        assert victim.process is not None
        os.killpg(victim.process.pid, signal.SIGTERM)

    load = asyncio.run(run_load(healthy.lb.url, actions={400: terminate}))
    assert victim.process is not None
    code = victim.process.wait(10)
    print(f"\nSIGTERM of api-3 at request 400 of 2000 (8 clients, {load.seconds:.2f} s): "
          f"{len(load.failures)} failed; served by {dict(sorted(load.served_by.items()))}; "
          f"it exited with {code}")  # fmt: skip
    assert load.failures == []
    assert load.ok == 2000
    assert "api-3" not in healthy.services()  # it deregistered on the way out
    assert stored(healthy, load.tag) == load.posts


def test_sse_through_the_lb_is_not_buffered(healthy: Cluster) -> None:
    service = f"sse-{uuid.uuid4().hex[:8]}"
    path = f"/api/logs/stream?service={service}"
    direct_url = healthy.apis["api-1"].url

    async def measure() -> list[float]:
        arrivals: dict[str, dict[str, float]] = {"lb": {}, "direct": {}}
        connected = {"lb": asyncio.Event(), "direct": asyncio.Event()}
        all_in = asyncio.Event()

        async def read(which: str, base: str, client: httpx.AsyncClient) -> None:
            async with client.stream("GET", base + path) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith(":"):
                        connected[which].set()
                    elif line.startswith("data:") and service in line:
                        message = line.split('"message":"', 1)[1].split('"', 1)[0]
                        arrivals[which][message] = time.monotonic()
                        if min(len(a) for a in arrivals.values()) == 5:
                            all_in.set()

        async with httpx.AsyncClient(timeout=None) as client:
            readers = [
                asyncio.create_task(read("lb", healthy.lb.url, client)),
                asyncio.create_task(read("direct", direct_url, client)),
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in connected.values())), 10)
            for i in range(5):
                await client.post(
                    direct_url + "/api/log", json={"message": f"m{i}", "service": service}
                )
                await asyncio.sleep(0.05)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), 5)
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        assert sorted(arrivals["lb"]) == [f"m{i}" for i in range(5)]
        return [arrivals["lb"][m] - arrivals["direct"][m] for m in sorted(arrivals["lb"])]

    lags = asyncio.run(measure())
    print(f"\nSSE through the LB vs directly from the instance: extra delay "
          f"{', '.join(f'{lag * 1000:.1f}' for lag in lags)} ms")  # fmt: skip
    assert max(lags) < 0.05
