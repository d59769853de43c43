"""Active health checking: every few seconds, `GET /health` of each live instance.

The verdict (healthy after `healthy_threshold` passes in a row, unhealthy after
`unhealthy_threshold` failures in a row) is kept by `InstancePool.record_probe`; this module only
probes. httpx is fine here: a probe every 2 s per instance is far off the proxy's hot path.

With several workers (`aygolog lb --workers N`), each instance is probed by one worker only (its
name's CRC-32 modulo N picks it, `share`), which reports each result to the other workers
(`on_result`); every worker keeps the same verdicts with one probe per instance per interval.

A probe connects where the proxy does (`Upstream.host`: the address checked at registration),
not to whatever the URL's host name resolves to now, and sends the URL's host as `Host` (and, for
https, as the TLS server name).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from aygolog.lb.pool import InstancePool, Upstream

__all__ = ["HealthCheckOptions", "HealthChecker"]

log = logging.getLogger("aygolog.lb.health")


@dataclass(frozen=True, slots=True)
class HealthCheckOptions:
    """How instances are probed.

    Args:
        interval: seconds between probe rounds (0 turns active checking off).
        timeout: seconds a probe may take before it counts as failed.
        path: what to GET on each instance; a 2xx answer passes.
    """

    interval: float = 2.0
    timeout: float = 1.0
    path: str = "/health"


class HealthChecker:
    """Probes every live instance of a pool and reports each result to it.

    Args:
        pool: whose instances to probe, and where the results go.
        options: interval, timeout, path.
        transport: an httpx transport (tests).
        share: which instances (by name) this checker probes; default all.
        on_result: called with (name, url, target, passed) after each probe, once the pool has
            it (with several workers: to tell the others).
    """

    def __init__(
        self,
        pool: InstancePool,
        options: HealthCheckOptions | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        share: Callable[[str], bool] | None = None,
        on_result: Callable[[str, str, Upstream, bool], None] | None = None,
    ) -> None:
        self.pool = pool
        self.options = options or HealthCheckOptions()
        self.share = share
        self.on_result = on_result
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.options.timeout),
            limits=httpx.Limits(max_keepalive_connections=32, keepalive_expiry=30.0),
            headers={"User-Agent": "aygolog-lb-health"},
            transport=transport,
            follow_redirects=False,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin probing in the background."""
        if self._task is None and self.options.interval > 0:
            self._task = asyncio.create_task(self._run(), name="aygolog-lb-health")

    async def aclose(self) -> None:
        """Stop probing and close connections."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()

    async def probe_all(self) -> None:
        """Probe every live instance once, concurrently, and report the results."""
        targets = self.pool.probe_targets()
        if self.share is not None:
            targets = [t for t in targets if self.share(t[0])]
        if targets:
            results = await asyncio.gather(
                *(self._probe(url, target) for _, url, target in targets)
            )
            for (name, url, target), ok in zip(targets, results, strict=True):
                self.pool.record_probe(name, url, ok, target=target)
                if self.on_result is not None:
                    self.on_result(name, url, target, ok)

    async def _run(self) -> None:
        # Start at a random point of the first interval, so that several load balancers started
        # together do not probe in step.
        await asyncio.sleep(random.uniform(0, self.options.interval))
        while True:
            await self.probe_all()
            await asyncio.sleep(self.options.interval)

    async def _probe(self, url: str, target: Upstream) -> bool:
        parts = urlsplit(url)
        host = target.host
        if ":" in host:
            host = f"[{host}]"
        probe_url = f"{parts.scheme}://{host}:{target.port}{self.options.path}"
        extensions: dict[str, Any] = {}
        if parts.scheme == "https" and parts.hostname and not _is_ip(parts.hostname):
            extensions["sni_hostname"] = parts.hostname
        try:
            response = await self._client.get(
                probe_url, headers={"Host": parts.netloc}, extensions=extensions
            )
        except httpx.HTTPError as exc:
            log.debug("health probe of %s failed: %s", url, exc)
            return False
        return response.is_success


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
