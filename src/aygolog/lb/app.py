"""`create_load_balancer`: the load balancer's control plane as a Litestar app.

Routes: the registration API (`POST /api/registration`, `PUT /api/registration/{name}/heartbeat`,
`DELETE /api/registration/{name}`, `GET /api/registration/services`), `GET /health` and
`GET /metrics`. Every other `/api/*` request, and the ingest protocols' paths (`is_ingest_path`),
is proxied to an instance by the data plane (`aygolog.lb.proxy`), which hands this app whatever
it does not proxy.

Who may register: the token (`AYGOLOG_REGISTRATION_TOKEN`) on every change, and both the peer
address of the request (register, heartbeat, deregister) and the host of the registered URL must
be inside one of `AYGOLOG_REGISTRATION_ALLOWED_NETWORKS` (default: the private and loopback
ranges) (403 with a JSON body otherwise). The peer check stops callers elsewhere; the URL check
stops a caller inside from pointing traffic (and the health checks) at a host outside. A URL whose
host is or resolves to a link-local (169.254.0.0/16, fe80::/10: cloud metadata services live
there), unspecified, broadcast or multicast address, or to the EC2 metadata service's IPv6
address, is refused whatever the setting says. The address checked is stored as the instance's
`ip` and is where the pool connects, so the name cannot be re-pointed later (DNS rebinding).

The lifespan opens Redis, builds the shared `RedisServiceRegistry`, loads and follows it in an
`InstancePool`, starts the active `HealthChecker`, and closes them in reverse order on exit.

With several workers (`aygolog lb --workers N`, `aygolog.lb.workers`) each worker runs this
whole app and data plane; its `WorkerBus` (`aygolog.lb.bus`) shares ejections, probe results
and registrations with the other workers, and `/metrics` merges every worker's values.
With `AYGOLOG_TLS_CERT`/`AYGOLOG_TLS_KEY` the listener speaks HTTP/1.1 over TLS
(`aygolog.lb.tls`), for the data plane and the control plane alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
from litestar import Litestar, Request, Response, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath

from aygolog import __version__
from aygolog.balancing import BalancerStrategy, make_strategy
from aygolog.errors import AuthError, MalformedInput, NotFound, ValidationError
from aygolog.ingest import is_ingest_path
from aygolog.lb.bus import WorkerBus, WorkerInfo
from aygolog.lb.health import HealthChecker, HealthCheckOptions
from aygolog.lb.networks import Network, check_network, inside
from aygolog.lb.pool import InstancePool, InstanceView, PoolOptions
from aygolog.lb.proxy import ProxyConfig
from aygolog.metrics import Counter, Metrics
from aygolog.models import ErrorBody, FieldError, Registration, ServiceInstance
from aygolog.redis import DEFAULT_URL as DEFAULT_REDIS_URL
from aygolog.redis import redis_from_settings
from aygolog.registry import ServiceRegistry, check_registration
from aygolog.registry.redis import RedisServiceRegistry
from aygolog.settings import DEFAULT_REGISTRATION_NETWORKS, LoadBalancerSettings
from aygolog.validation import _from_msgspec
from aygolog.web import exception_handlers, json_response, request_body

__all__ = [
    "DEFAULT_REDIS_URL",
    "LifespanDriver",
    "LoadBalancerState",
    "create_load_balancer",
    "health_options_from",
    "lb_state",
    "pool_options_from",
    "proxied",
    "proxy_config_from",
    "run_load_balancer",
    "serve_load_balancer",
]

log = logging.getLogger("aygolog.lb")
_DECODE_REGISTRATION: Final = msgspec.json.Decoder(Registration)
_MAX_REGISTRATION_BYTES: Final = 64 * 1024


@dataclass(kw_only=True)
class LoadBalancerState:
    """What the handlers and the data plane share, built in the app's lifespan."""

    settings: LoadBalancerSettings
    registry: ServiceRegistry
    pool: InstancePool
    health: HealthChecker
    metrics: Metrics
    token: bytes | None
    allowed_networks: Sequence[Network] = ()
    registrations: Counter | None = None
    stopping: bool = field(default=False)
    worker: WorkerInfo | None = None
    """Which worker this is, when `aygolog lb` runs several (None: the only process)."""
    bus: WorkerBus | None = None
    """The bus to the other workers (None with one process)."""


def lb_state(app: Litestar) -> LoadBalancerState:
    """The running load balancer's state (after the lifespan has started).

    Raises:
        RuntimeError: the lifespan has not started.
    """
    state = app.state.get("lb")
    if not isinstance(state, LoadBalancerState):
        raise RuntimeError("the load balancer's lifespan has not started")
    return state


def create_load_balancer(
    settings: LoadBalancerSettings | None = None,
    *,
    registry: ServiceRegistry | None = None,
    strategy: BalancerStrategy | None = None,
    pool_options: PoolOptions | None = None,
    health_options: HealthCheckOptions | None = None,
    allowed_networks: Sequence[str | Network] | None = None,
    worker: WorkerInfo | None = None,
) -> Litestar:
    """Build the load balancer's control plane.

    Args:
        settings: Redis, strategy, registration token, TTL; read from the environment when None.
        registry: a registry to use instead of the Redis one the settings describe (not closed
            by the app).
        strategy: a strategy instance instead of `settings.strategy`.
        pool_options: polling, passive ejection and health thresholds (default: from settings).
        health_options: the active health check's interval, timeout and path (default: from
            settings).
        allowed_networks: instead of `settings.registration_allowed_networks`: only requests
            from these networks may register, heartbeat or deregister, and only URLs whose host
            is (or resolves only to) addresses inside, e.g. `["10.0.0.0/8"]`; empty: the
            default private and loopback ranges (`["0.0.0.0/0", "::/0"]` allows any address).
        worker: which of several workers this is (`aygolog.lb.workers`): the app then shares
            its pool's news with the other workers over their bus.

    Raises:
        ValueError: an allowed network is not a valid CIDR.
    """
    settings = settings or LoadBalancerSettings()
    if allowed_networks is None:
        allowed_networks = settings.registration_allowed_networks
    networks = [
        ipaddress.ip_network(n, strict=False)
        for n in (allowed_networks or DEFAULT_REGISTRATION_NETWORKS)
    ]
    pool_options = pool_options or pool_options_from(settings)
    health_options = health_options or health_options_from(settings)
    token = settings.registration_token
    token_bytes = token.get_secret_value().encode() if token is not None else None
    if token_bytes is None:
        _warn_open_registration()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client: aioredis.Redis | None = None
        active = registry
        if active is None:
            client = redis_from_settings(settings.redis)
            active = RedisServiceRegistry(
                client,
                prefix=settings.redis.prefix,
                ttl=timedelta(seconds=settings.heartbeat_ttl),
            )
        metrics = Metrics()
        pool = InstancePool(
            active,
            strategy or make_strategy(settings.strategy),
            options=pool_options,
            metrics=metrics,
        )
        bus = None if worker is None else WorkerBus(worker, pool, metrics)
        health = HealthChecker(
            pool,
            health_options,
            share=None if worker is None else worker.owns,
            on_result=None if bus is None else bus.probed,
        )
        state = LoadBalancerState(
            settings=settings,
            registry=active,
            pool=pool,
            health=health,
            metrics=metrics,
            token=token_bytes,
            allowed_networks=networks,
            registrations=metrics.counter(
                "aygolog_lb_registration_requests_total",
                "Registration API requests by route and outcome",
                ("route", "outcome"),
            ),
            worker=worker,
            bus=bus,
        )
        app.state.lb = state
        try:
            if token_bytes is None:
                _warn_open_registration()
            if bus is not None:
                bus.open()
                metrics.gauge(
                    "aygolog_lb_workers_reporting",
                    "Workers whose values this scrape merged (of aygolog_lb_workers)",
                    read=lambda: {(): float(bus.reporting)},
                )
            metrics.gauge(
                "aygolog_lb_workers",
                "Worker processes of this load balancer",
                read=lambda: {(): float(1 if worker is None else worker.count)},
            )
            await pool.start()
            if bus is not None:
                bus.hello()  # the others' ejections and verdicts, if this worker restarted
            if pool.registry_error is not None:
                log.warning("load balancer started without the registry: %s", pool.registry_error)
            await health.start()
            log.info(
                "load balancer ready: strategy %s, %d instance(s) known",
                pool.strategy.name,
                len(pool.views()),
            )
            yield
        finally:
            state.stopping = True
            await health.aclose()
            if bus is not None:
                bus.close()
            await pool.aclose()
            if client is not None:
                await client.aclose()

    return Litestar(
        route_handlers=ROUTES,
        lifespan=[lifespan],
        exception_handlers=exception_handlers(),
        openapi_config=OpenAPIConfig(
            title="aygolog load balancer",
            version=__version__,
            description=(
                "The registration API of the load balancer. Every other /api/* request is"
                " proxied to a Log API instance."
            ),
        ),
        # No CORS here: the registration API and the control plane are never exposed to
        # browsers of other origins (the data plane answers CORS on the log routes only).
        cors_config=None,
        request_max_body_size=_MAX_REGISTRATION_BYTES,
        debug=False,
    )


def pool_options_from(settings: LoadBalancerSettings) -> PoolOptions:
    """The pool's polling, ejection and health-check thresholds from the settings."""
    return PoolOptions(
        poll_interval=settings.registry_poll_interval,
        ejection_base=settings.ejection_base,
        ejection_max=settings.ejection_max,
        max_ejected_fraction=settings.max_ejected_percent / 100,
        failures_to_eject=settings.ejection_consecutive_failures,
        healthy_threshold=settings.healthy_threshold,
        unhealthy_threshold=settings.unhealthy_threshold,
        heartbeat_ttl=settings.heartbeat_ttl,
    )


def health_options_from(settings: LoadBalancerSettings) -> HealthCheckOptions:
    """The active health check's interval and timeout from the settings."""
    return HealthCheckOptions(
        interval=settings.health_check_interval, timeout=settings.health_check_timeout
    )


def proxy_config_from(settings: LoadBalancerSettings, *, grace: float = 4.0) -> ProxyConfig:
    """The data plane's limits, timeouts, retry rules, API keys and CORS from the settings
    (and `https` as the `X-Forwarded-Proto` when it serves TLS)."""
    return ProxyConfig(
        scheme="https" if settings.tls_cert is not None else "http",
        max_body_size=settings.max_body_bytes,
        connect_timeout=settings.connect_timeout,
        response_timeout=settings.response_timeout,
        max_retries=settings.max_retries,
        retry_ratio=settings.retry_budget_percent / 100,
        retry_min_per_second=settings.retry_budget_min_per_second,
        retry_window=settings.retry_budget_window,
        shutdown_timeout=grace,
        api_keys=dict(settings.api_keys),
        cors_origins=tuple(settings.cors_origins),
        max_header_size=settings.max_header_bytes,
        max_request_line=settings.max_request_line_bytes,
        max_header_line=settings.max_header_line_bytes,
        request_head_timeout=settings.client_header_timeout,
        request_body_timeout=settings.client_body_timeout,
        keep_alive_timeout=settings.keepalive_timeout,
    )


def _warn_open_registration() -> None:
    log.warning(
        "!!! REGISTRATION IS OPEN: no AYGOLOG_REGISTRATION_TOKEN is set and"
        " --insecure-open-registration was given. Anyone who can reach this load balancer can"
        " register an instance and take over its traffic. Set AYGOLOG_REGISTRATION_TOKEN here"
        " and on every Log API instance. !!!"
    )


# -- auth ------------------------------------------------------------------------------------


def _state(state: State) -> LoadBalancerState:
    lb = state.get("lb")
    assert isinstance(lb, LoadBalancerState)
    return lb


async def require_token(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    """Guard: the request carries `Authorization: Bearer <registration token>`.

    The comparison takes the same time whatever the token sent; without a configured token
    (open registration, opted into) every request passes. With allowed networks, the request's
    peer address must be inside one of them (403 otherwise), checked first.
    """
    lb = _state(connection.app.state)
    if lb.allowed_networks:  # never empty from create_load_balancer
        peer = connection.client.host if connection.client is not None else ""
        if not inside(peer, lb.allowed_networks):
            _count(lb, connection, "forbidden")
            raise PermissionDeniedException(
                f"{peer or 'an unknown address'} is outside the networks allowed to register"
                " (AYGOLOG_REGISTRATION_ALLOWED_NETWORKS)"
            )
    if lb.token is None:
        return
    header = connection.headers.get("authorization", "")
    scheme, _sep, sent = header.partition(" ")
    if not header:
        _count(lb, connection, "unauthorized")
        raise AuthError("registration needs Authorization: Bearer <AYGOLOG_REGISTRATION_TOKEN>")
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), lb.token):
        _count(lb, connection, "unauthorized")
        raise AuthError("wrong registration token")


def _count(
    lb: LoadBalancerState, connection: ASGIConnection[Any, Any, Any, Any], outcome: str
) -> None:
    if lb.registrations is not None:
        route = connection.scope.get("path_template") or connection.url.path
        lb.registrations.inc(f"{connection.scope.get('method', '')} {route}", outcome)


# -- the registration API --------------------------------------------------------------------

_ERRORS: Final = {
    400: "Malformed JSON",
    401: "Missing or wrong registration token",
    403: "The caller or the instance's host is outside the allowed networks",
    404: "No instance by that name is registered",
    422: "Invalid registration: each bad field and why",
    503: "The registry (Redis) is unavailable; retry after Retry-After seconds",
}


def _responses(*codes: int) -> dict[int, ResponseSpec]:
    return {
        code: ResponseSpec(data_container=ErrorBody, description=_ERRORS[code]) for code in codes
    }


def decode_registration(body: bytes) -> Registration:
    """Decode and check a registration body.

    Raises:
        MalformedInput: not JSON.
        ValidationError: a wrong type, or a value `check_registration` refuses.
    """
    try:
        registration = _DECODE_REGISTRATION.decode(body)
    except msgspec.ValidationError as exc:
        raise ValidationError([_from_msgspec(exc)]) from None
    except msgspec.DecodeError as exc:
        raise MalformedInput([FieldError(field="$", reason=f"malformed JSON: {exc}")]) from None
    check_registration(registration)
    return registration


@post(
    "/api/registration",
    guards=[require_token],
    summary="Register or update an instance",
    operation_class=request_body({"application/json": Registration}, "The instance"),
    responses=_responses(400, 401, 403, 422, 503),
    status_code=201,
)
async def register(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """POST /api/registration: add an instance (201), or update it and refresh its heartbeat."""
    lb = _state(state)
    registration = decode_registration(await request.body())
    # Connect to the address checked now, not to whatever the name resolves to later.
    address = await check_network(registration.url, lb.allowed_networks)
    registration = msgspec.structs.replace(registration, ip=address)
    known = await lb.registry.get(registration.name)
    instance = await lb.registry.register(registration)
    new = known is None
    lb.pool.observe(instance, came_back=True)  # a (re)starting process: forget its old record
    if lb.bus is not None:
        lb.bus.observed(instance, came_back=True)
    _count(lb, request, "ok")
    return json_response(instance, 201 if new else 200)


@put(
    "/api/registration/{name:str}/heartbeat",
    guards=[require_token],
    summary="Heartbeat: the instance is alive",
    responses=_responses(401, 403, 404, 503),
)
async def heartbeat(
    name: FromPath[str], request: Request[Any, Any, Any], state: State
) -> ServiceInstance:
    """PUT /api/registration/{name}/heartbeat: 200, or 404 when unknown (register again)."""
    lb = _state(state)
    # Alive even if the registry cannot record it (Redis full or down): see `InstancePool.heard`.
    lb.pool.heard(name)
    if lb.bus is not None:
        lb.bus.heard(name)
    instance = await lb.registry.heartbeat(name)
    lb.pool.observe(instance)
    if lb.bus is not None:
        lb.bus.observed(instance)
    _count(lb, request, "ok")
    return instance


@delete(
    "/api/registration/{name:str}",
    guards=[require_token],
    summary="Deregister an instance",
    responses=_responses(401, 403, 404, 503),
    status_code=204,
)
async def deregister(name: FromPath[str], request: Request[Any, Any, Any], state: State) -> None:
    """DELETE /api/registration/{name}: 204; new requests stop at once, in-flight ones finish."""
    lb = _state(state)
    if not await lb.registry.deregister(name):
        raise NotFound(f"no instance named {name!r} is registered")
    lb.pool.remove(name)
    if lb.bus is not None:
        lb.bus.removed(name)
    _count(lb, request, "ok")


@get(
    "/api/registration/services",
    summary="Every instance with its status, heartbeat age, load and failures",
)
async def services(state: State) -> list[InstanceView]:
    """GET /api/registration/services: the seed's verification call, from the local snapshot."""
    return _state(state).pool.views()


@get("/health", summary="Load balancer health, with instance counts")
async def health(state: State) -> Response[bytes]:
    """GET /health: 200 while it can route (the registry has been read), else 503.

    `panic` is true while no instance is healthy and requests go to every live one.
    """
    lb = _state(state)
    pool = lb.pool
    counts = pool.counts()
    routable = len(pool.routable())
    sync_age = pool.sync_age()
    if lb.stopping:
        status = "stopping"
    elif not pool.loaded:
        status = "registry_unavailable"
    elif routable == 0:
        status = "no_healthy_instances"
    elif pool.registry_error is not None:
        status = "degraded"
    else:
        status = "ok"
    body = {
        "status": status,
        "strategy": pool.strategy.name,
        "healthy_instances": routable,
        "panic": pool.in_panic(),
        "instances": counts,
        "registry": {
            "ok": pool.registry_error is None,
            "error": pool.registry_error,
            "last_sync_seconds_ago": None if sync_age is None else round(sync_age, 3),
        },
        "worker": {
            "index": 0 if lb.worker is None else lb.worker.index,
            "count": 1 if lb.worker is None else lb.worker.count,
            "pid": os.getpid(),
        },
    }
    if pool.loaded and not lb.stopping:
        return json_response(body)
    return json_response(body, 503, {"Retry-After": "1"})


@get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4")
async def metrics(state: State) -> Response[str]:
    """GET /metrics: requests by instance and status, latency, retries, ejections, health.

    With several workers, whichever answers merges the others' values (see `aygolog.metrics`):
    counters and histograms are the sums over the workers.
    """
    lb = _state(state)
    others = await lb.bus.gather_metrics() if lb.bus is not None else []
    return Response(lb.metrics.render(others), media_type=Metrics.content_type)


ROUTES: Final = [register, heartbeat, deregister, services, health, metrics]


# -- running the app's lifespan without an ASGI server ------------------------------------------


class LifespanDriver:
    """Runs an ASGI app's lifespan by hand: `await startup()`, serve, `await shutdown()`.

    The data plane is not an ASGI server, so it drives the Litestar app's lifespan itself.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._started: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.state: dict[str, Any] = {}
        """The lifespan state the app set (ASGI `scope["state"]`), for each request's scope."""

    async def startup(self) -> None:
        """Send `lifespan.startup` and wait for the app to be ready.

        Raises:
            RuntimeError: the app's start-up failed (its message says why).
        """
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._stopped = loop.create_future()
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        self._task = asyncio.create_task(self._run(scope), name="aygolog-lb-lifespan")
        await self._inbox.put({"type": "lifespan.startup"})
        await self._started

    async def shutdown(self) -> None:
        """Send `lifespan.shutdown` and wait for the app to have released everything."""
        if self._task is None or self._stopped is None:
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            await self._stopped
        finally:
            with contextlib.suppress(Exception):
                await self._task

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self._app(scope, self._inbox.get, self._send)
        except Exception as exc:
            for future in (self._started, self._stopped):
                if future is not None and not future.done():
                    future.set_exception(RuntimeError(f"lifespan failed: {exc}"))
            raise
        for future in (self._started, self._stopped):
            if future is not None and not future.done():
                future.set_exception(RuntimeError("the app ended its lifespan early"))

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        future = self._started if kind.startswith("lifespan.startup") else self._stopped
        if future is None or future.done():
            return
        if kind.endswith(".complete"):
            future.set_result(None)
        else:
            future.set_exception(RuntimeError(message.get("message") or kind))


# -- serving ------------------------------------------------------------------------------------


def serve_load_balancer(
    settings: LoadBalancerSettings | None = None, *, worker: WorkerInfo | None = None
) -> None:
    """Run the load balancer until SIGTERM/SIGINT (what `aygolog lb` does), on uvloop.

    The data plane (`aygolog.lb.proxy.ProxyServer`) listens on `settings.host:port`, proxies
    `/api/*` (except the registration API) to the instances the pool picks, and hands every other
    request to the control plane app in-process. Stops gracefully: no new connections, in-flight
    requests get up to 4 s, then the app's lifespan closes the pool, health checks and Redis.
    As one of several workers (`worker`, see `aygolog.lb.workers`) it listens with SO_REUSEPORT
    and SIGUSR1 (its supervisor died) stops it too.

    Raises:
        TLSConfigError: the TLS certificate or key cannot be used.
    """
    import uvloop

    settings = settings or LoadBalancerSettings()
    _configure_logging()
    uvloop.run(run_load_balancer(settings, worker=worker))


def proxied(method: str, path: str) -> bool:
    """The data plane's route: `/api/*` goes to an instance, except the registration API;
    so do the ingest protocols' paths (`is_ingest_path`)."""
    if path.startswith("/api/"):
        return not (path == _REGISTRATION or path.startswith(_REGISTRATION_PREFIX))
    return is_ingest_path(path)


_REGISTRATION: Final = "/api/registration"
_REGISTRATION_PREFIX: Final = "/api/registration/"


async def run_load_balancer(
    settings: LoadBalancerSettings,
    *,
    app: Litestar | None = None,
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
    grace: float = 4.0,
    worker: WorkerInfo | None = None,
) -> None:
    """Serve the load balancer on the running loop until `stop` is set (or SIGTERM/SIGINT).

    Args:
        settings: where to listen, timeouts, TLS (and, unless `app` is given, everything else).
        app: the control plane (default `create_load_balancer(settings, worker=worker)`).
        stop: set it to stop; when None, SIGTERM and SIGINT (and SIGUSR1 for a worker) stop
            the server.
        started: called with the bound port once the proxy listens.
        grace: seconds in-flight requests get to finish when stopping.
        worker: which of several workers this is: listen with SO_REUSEPORT beside the others.

    Raises:
        TLSConfigError: the TLS certificate or key cannot be used (before anything starts).
    """
    import signal

    from aygolog.lb.proxy import ProxyServer
    from aygolog.lb.tls import server_context

    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = server_context(settings.tls_cert, settings.tls_key)
    app = app or create_load_balancer(settings, worker=worker)
    lifespan = LifespanDriver(app)
    await lifespan.startup()
    try:
        lb = lb_state(app)
        proxy = ProxyServer(
            picker=lb.pool,
            route=proxied,
            asgi_app=app,
            asgi_state=lifespan.state,
            config=proxy_config_from(settings, grace=grace),
        )
        lb.metrics.gauge(
            "aygolog_lb_client_connections",
            "Client connections open now",
            read=lambda: {(): float(proxy.stats.connections)},
            merge="sum",
        )
        index = "0" if worker is None else str(worker.index)
        lb.metrics.counter(
            "aygolog_lb_worker_proxied_total",
            "Requests each worker proxied to an instance (how the kernel spread the load)",
            ("worker",),
            read=lambda: {(index,): float(proxy.stats.proxied)},
        )
        loop = asyncio.get_running_loop()
        if stop is None:
            stop = asyncio.Event()
            signals = [signal.SIGTERM, signal.SIGINT]
            if worker is not None:
                signals.append(signal.SIGUSR1)  # from the lifeline: the supervisor is gone
            for sig in signals:
                loop.add_signal_handler(sig, stop.set)
        await proxy.start(settings.host, settings.port, reuse_port=worker is not None, ssl=tls)
        log.info(
            "load balancer %slistening on %s://%s:%d",
            "" if worker is None else f"worker {worker.index} (pid {os.getpid()}) ",
            "https" if tls is not None else "http",
            settings.host,
            proxy.port,
        )
        if started is not None:
            started(proxy.port)
        try:
            await stop.wait()
            log.info("stopping: finishing in-flight requests (at most %g s)", grace)
        finally:
            await proxy.aclose(grace)
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await lifespan.shutdown()


def _configure_logging() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per health probe
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
