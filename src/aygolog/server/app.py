"""`create_log_api`: the Log API as a Litestar app, built from settings (no globals).

The app's lifespan opens the Redis client, starts the live-tail reader and the registration
agent, and closes them in reverse order on shutdown (deregistering from the load balancer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from typing import Any, Final
from urllib.parse import parse_qsl

import msgspec
import redis.asyncio as aioredis
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from aygolog import __version__
from aygolog.ingest import SEQ_PATHS, is_ingest_path
from aygolog.metrics import Counter, Histogram, Metrics
from aygolog.models import ErrorBody, Limits, Registration
from aygolog.redis import redis_from_settings
from aygolog.server.agent import RegistrationAgent
from aygolog.server.ingest import INGEST_ROUTES
from aygolog.server.instrumented import InstrumentedStore
from aygolog.server.reads import ReadGate
from aygolog.server.routes import ROUTES, ApiState
from aygolog.server.tail import TailHub
from aygolog.settings import LogApiSettings
from aygolog.store import LogStore, Retention, StoreOptions
from aygolog.store.redis import RedisStreamLogStore
from aygolog.web import exception_handlers

__all__ = ["create_log_api"]

log = logging.getLogger("aygolog.server")


def create_log_api(
    settings: LogApiSettings | None = None,
    *,
    store: LogStore | None = None,
    limits: Limits | None = None,
    keepalive_seconds: float = 15.0,
    tail_queue_size: int = 1000,
) -> Litestar:
    """Build the Log API app.

    Args:
        settings: where Redis and the load balancer are, the instance's name, limits;
            read from the environment (seed names included) when None.
        store: a store to use instead of the Redis one the settings describe (it is not
            closed by the app).
        limits: what one log entry may hold.
        keepalive_seconds: how often an idle live-tail stream gets a comment.
        tail_queue_size: how many live-tail entries a subscriber may have waiting.
    """
    settings = settings or LogApiSettings()
    instance = settings.instance_name
    metrics = Metrics()
    requests = metrics.counter(
        "aygolog_http_requests_total", "HTTP requests by route and status", ("route", "status")
    )
    latency = metrics.histogram(
        "aygolog_http_request_seconds", "HTTP request latency by route", ("route",)
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client: aioredis.Redis | None = None
        active = store
        if active is None:
            client = redis_from_settings(settings.redis)
            active = RedisStreamLogStore(
                client,
                instance=instance,
                prefix=settings.redis.prefix,
                options=StoreOptions(
                    max_page_bytes=settings.max_page_bytes,
                    retention=Retention(
                        max_entries=settings.retention_max_entries or None,
                        max_age=timedelta(seconds=settings.retention_max_age)
                        if settings.retention_max_age
                        else None,
                    ),
                ),
            )
        active = InstrumentedStore(active, metrics)
        hub = TailHub(active, queue_size=tail_queue_size)
        api = ApiState(
            instance=instance,
            store=active,
            hub=hub,
            metrics=metrics,
            limits=limits or Limits(),
            max_batch_items=settings.max_batch_items,
            max_body_bytes=settings.max_body_bytes,
            keepalive_seconds=keepalive_seconds,
            reads=ReadGate(settings.max_concurrent_reads, settings.read_queue_timeout),
        )
        app.state.api = api
        agent = _agent(settings, instance, api.registration)
        if agent is not None:
            # httpx logs every request at INFO: one line per heartbeat is noise in `docker logs`.
            logging.getLogger("httpx").setLevel(logging.WARNING)
            await agent.start()
        draining: list[asyncio.Task[None]] = []

        def drain() -> None:
            # SIGUSR1 from `aygolog api` just before it stops the server: deregister now (the
            # load balancer sends nothing new) and end the live streams, which would otherwise
            # hold the graceful shutdown until the server kills this worker.
            log.info("draining: deregistering and ending %d live stream(s)", hub.subscribers)
            hub.drain()
            if agent is not None and not draining:
                draining.append(asyncio.create_task(agent.stop()))

        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signal.SIGUSR1, drain)  # main thread of a POSIX process only
        log.info("Log API %s ready", instance)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.remove_signal_handler(signal.SIGUSR1)
            await asyncio.gather(*draining, return_exceptions=True)
            if agent is not None:
                await agent.stop()
            await hub.stop()
            if client is not None:
                await client.aclose()

    return Litestar(
        route_handlers=[*ROUTES, *INGEST_ROUTES],
        lifespan=[lifespan],
        exception_handlers=exception_handlers(),
        openapi_config=OpenAPIConfig(
            title="aygolog Log API",
            version=__version__,
            description="Ingest, query and live-tail logs. JSON field names are snake_case.",
        ),
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins))
        if settings.cors_origins
        else None,
        middleware=[
            _metrics_middleware(requests, latency),
            *([_api_key_middleware(settings.api_keys)] if settings.api_keys else []),
        ],
        request_max_body_size=settings.max_body_bytes + 1,
        debug=False,
    )


def _agent(
    settings: LogApiSettings, instance: str, report: dict[str, Any]
) -> RegistrationAgent | None:
    registration = settings.registration
    if not registration.enabled or registration.lb_url is None:
        return None
    token = registration.registration_token
    return RegistrationAgent(
        lb_url=registration.lb_url,
        registration=Registration(name=instance, url=settings.advertised_url()),
        token=token.get_secret_value() if token is not None else None,
        interval=registration.heartbeat_interval,
        report=report,
    )


def _metrics_middleware(requests: Counter, latency: Histogram) -> Callable[[ASGIApp], ASGIApp]:
    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = [500]

            async def watch(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, watch)
            finally:
                route = scope.get("path_template") or "unmatched"
                requests.inc(route, str(status[0]))
                latency.observe(time.perf_counter() - started, route)

        return middleware

    return factory


_READ_METHODS = frozenset({"GET", "HEAD"})


def api_key_refusal(
    keys: Mapping[str, str], method: str, authorization: str | None, x_api_key: str | None
) -> tuple[int, str] | None:
    """Why a request to `/api/log*` is refused under `keys` (key -> scope), or None.

    The key comes from `Authorization: Bearer <key>` or `X-Api-Key`; GET and HEAD need the
    `read` scope, other methods `write` (the load balancer's rule and messages).
    """
    key = x_api_key.strip() if x_api_key else None
    if authorization:
        scheme, _, rest = authorization.partition(" ")
        if scheme.lower() == "bearer":
            key = rest.strip()
    if not key:
        return 401, "an API key is needed: Authorization: Bearer <key> or X-Api-Key: <key>"
    scope = keys.get(key)
    if scope is None:
        return 401, "unknown API key"
    needed = "read" if method in _READ_METHODS else "write"
    if needed not in scope:
        return 403, f"this API key may not {needed} ({method} needs the {needed} scope)"
    return None


_KEY_HEADERS: Final = (b"authorization", b"x-api-key")


def _query_key(query: bytes) -> str | None:
    """The `apiKey` parameter of a query string (Seq's clients may put the key there)."""
    for name, value in parse_qsl(query.decode("latin-1")):
        if name == "apiKey" and value:
            return value
    return None


def _api_key_middleware(keys: Mapping[str, str]) -> Callable[[ASGIApp], ASGIApp]:
    """Refuse `/api/log*` and ingest requests without a key of the needed scope (401/403).

    On Seq's paths the key may also come as `X-Seq-ApiKey` or `?apiKey=`, and a refusal is in
    Seq's shape (`{"Error": ...}`).
    """

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if (
                scope["type"] != ScopeType.HTTP
                or not (scope["path"].startswith("/api/log") or is_ingest_path(scope["path"]))
                or scope["method"] == "OPTIONS"  # CORS preflights carry no credentials
            ):
                await app(scope, receive, send)
                return
            seq = scope["path"] in SEQ_PATHS
            wanted = (b"authorization", b"x-api-key", b"x-seq-apikey") if seq else _KEY_HEADERS
            headers = {
                name: value.decode("latin-1") for name, value in scope["headers"] if name in wanted
            }
            key = headers.get(b"x-api-key")
            if seq:  # Seq's clients send X-Seq-ApiKey, or ?apiKey= in the URL
                key = key or headers.get(b"x-seq-apikey") or _query_key(scope["query_string"])
            refusal = api_key_refusal(keys, scope["method"], headers.get(b"authorization"), key)
            if refusal is None:
                await app(scope, receive, send)
                return
            status, reason = refusal
            if seq:
                reason = reason.replace(
                    " or X-Api-Key: <key>",
                    ", X-Api-Key: <key>, X-Seq-ApiKey: <key> or ?apiKey=<key>",
                )
                body = msgspec.json.encode({"Error": reason})
            else:
                body = msgspec.json.encode(ErrorBody(error=reason))
            answer = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            if status == 401:
                answer.append((b"www-authenticate", b"Bearer"))
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": status,
                "headers": answer,
            }
            await send(start)
            whole: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": body,
                "more_body": False,
            }
            await send(whole)

        return middleware

    return factory
