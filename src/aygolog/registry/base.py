"""The `ServiceRegistry` protocol, its defaults, and the one check of a `Registration`.

`check_registration()` is the single definition of what may register; both registries call it,
and so does the load balancer before it answers a registration request.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol, runtime_checkable
from urllib.parse import urlsplit

from aygolog.errors import ValidationError
from aygolog.models import (
    FieldError,
    InstanceStatus,
    Registration,
    RegistryEvent,
    ServiceInstance,
)

__all__ = [
    "DEFAULT_PURGE_AFTER",
    "DEFAULT_TTL",
    "MAX_METADATA",
    "MAX_WEIGHT",
    "NAME_PATTERN",
    "ServiceRegistry",
    "check_registration",
    "from_ms",
    "status_at",
]

DEFAULT_TTL: Final = timedelta(seconds=6)
"""An instance is healthy while its last heartbeat is at most this old."""
DEFAULT_PURGE_AFTER: Final = timedelta(minutes=10)
"""An instance expired for longer than this is removed by `sweep()`."""
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_WEIGHT: Final = 1000
MAX_METADATA: Final = 64
_MAX_METADATA_KEY: Final = 128
_MAX_METADATA_VALUE: Final = 1024
_MAX_URL: Final = 2048
_MAX_IP: Final = 255
_HOST: Final = re.compile(r"[A-Za-z0-9._-]{1,253}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@runtime_checkable
class ServiceRegistry(Protocol):
    """Which Log API instances exist and whether they are alive, shared by every load balancer.

    An instance is HEALTHY while `now - last_heartbeat <= ttl`, else EXPIRED. Every change is
    atomic and announced as a `RegistryEvent` to every `watch()`.
    """

    @property
    def ttl(self) -> timedelta:
        """How old a heartbeat may be before the instance counts as expired."""
        ...

    @property
    def purge_after(self) -> timedelta:
        """How long an instance stays listed (as EXPIRED) before `sweep()` removes it."""
        ...

    async def register(self, registration: Registration) -> ServiceInstance:
        """Add an instance, or update it (same name) and refresh its heartbeat.

        `registered_at` is kept on update. Emits `registered` for a new instance or one that had
        expired (it came back), `updated` otherwise.

        Raises:
            ValidationError: see `check_registration`; nothing is stored.
        """
        ...

    async def heartbeat(self, name: str) -> ServiceInstance:
        """Refresh the instance's heartbeat; emits `registered` if it had expired.

        Raises:
            NotFound: no such instance (it should register again).
        """
        ...

    async def deregister(self, name: str) -> bool:
        """Remove the instance (emits `deregistered`); False when there was none."""
        ...

    async def get(self, name: str) -> ServiceInstance | None:
        """The named instance with its current status, or None."""
        ...

    async def instances(self) -> list[ServiceInstance]:
        """Every registered instance, healthy or expired, sorted by name."""
        ...

    async def sweep(self) -> list[str]:
        """Announce newly expired instances and purge long-expired ones.

        Emits one `expired` event per instance, exactly once even when several load balancers
        sweep at the same time, and `deregistered` for each instance removed because it had been
        expired for longer than `purge_after`. Meant to be called every second or so.

        Returns:
            The names newly expired by this call.
        """
        ...

    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[RegistryEvent]]:
        """Registry changes as they happen, from the moment the `async with` block is entered.

            async with registry.watch() as events:
                await registry.register(...)      # not missed: subscribed on entry
                async for event in events:
                    ...

        Each watch has its own subscription; leaving the block ends it. Events are not dropped,
        however fast they come. When the subscription is lost (e.g. Redis restarted), iteration
        raises `Unavailable`: events may have been missed, so reload `instances()` and watch again.
        """
        ...

    async def ping(self) -> None:
        """Return when the registry answers; raise `Unavailable` when it does not."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def check_registration(registration: Registration) -> None:
    """Refuse a registration whose name, url, weight, ip, port or metadata is unusable.

    - name: 1-128 characters of `A-Z a-z 0-9 . _ : -`;
    - url: `http://` or `https://`, a host (name, IPv4 or [IPv6]), an explicit or implied port,
      no user or password, no path other than "" or "/", no query or fragment;
    - weight: 0-1000 (0 drains: the instance stays registered but gets no new requests);
    - port (when given): 1-65535; ip (when given): at most 255 characters;
    - metadata: at most 64 entries, keys 1-128 characters, values at most 1024 characters.

    Raises:
        ValidationError: naming each bad field.
    """
    errors: list[FieldError] = []
    if not NAME_PATTERN.fullmatch(registration.name):
        errors.append(
            FieldError(field="name", reason="must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        )
    url_problem = _url_problem(registration.url)
    if url_problem is not None:
        errors.append(FieldError(field="url", reason=url_problem))
    if not 0 <= registration.weight <= MAX_WEIGHT:
        errors.append(
            FieldError(field="weight", reason=f"must be 0-{MAX_WEIGHT} (0: no new requests)")
        )
    if registration.port is not None and not 1 <= registration.port <= 65535:
        errors.append(FieldError(field="port", reason="must be 1-65535"))
    if registration.ip is not None and not 1 <= len(registration.ip) <= _MAX_IP:
        errors.append(FieldError(field="ip", reason=f"must be 1-{_MAX_IP} characters"))
    errors += _metadata_problems(registration.metadata)
    if errors:
        raise ValidationError(errors)


def _url_problem(url: str) -> str | None:
    if len(url) > _MAX_URL:
        return f"must be at most {_MAX_URL} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if parts.username is not None or parts.password is not None:
        return "must not contain a user name or password"
    host = parts.hostname
    if not host:
        return "must name a host"
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "must name a valid host"
    elif not _HOST.fullmatch(host):
        return "must name a valid host"
    if port is not None and port == 0:
        return "port must be 1-65535"
    if parts.path not in ("", "/"):
        return "must have no path (the instance's base URL, e.g. http://10.0.0.5:5001)"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "must have no query or fragment"
    return None


def _metadata_problems(metadata: dict[str, str]) -> list[FieldError]:
    if len(metadata) > MAX_METADATA:
        return [FieldError(field="metadata", reason=f"must have at most {MAX_METADATA} entries")]
    for key, value in metadata.items():
        if not 1 <= len(key) <= _MAX_METADATA_KEY:
            return [
                FieldError(
                    field="metadata", reason=f"keys must be 1-{_MAX_METADATA_KEY} characters"
                )
            ]
        if len(value) > _MAX_METADATA_VALUE:
            return [
                FieldError(
                    field=f"metadata.{key}",
                    reason=f"must be at most {_MAX_METADATA_VALUE} characters",
                )
            ]
    return []


def from_ms(ms: int) -> datetime:
    """A UTC datetime from milliseconds since the epoch (the registry's time resolution)."""
    return _EPOCH + timedelta(milliseconds=ms)


def status_at(last_heartbeat_ms: int, now_ms: int, ttl_ms: int) -> InstanceStatus:
    """HEALTHY while the heartbeat is at most `ttl_ms` old, else EXPIRED."""
    if now_ms - last_heartbeat_ms <= ttl_ms:
        return InstanceStatus.HEALTHY
    return InstanceStatus.EXPIRED
