"""The registration agent: a Log API instance announcing itself to the load balancer.

The seed's ServiceRegistration, made robust: it registers at start-up (retrying with backoff
while the LB is unreachable, without keeping the instance from serving), heartbeats, registers
again when the LB answers 404 for the heartbeat (e.g. after the LB lost its state), and
deregisters on graceful shutdown. Every request carries the registration token as
`Authorization: Bearer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import httpx
import msgspec

from aygolog.models import Registration

__all__ = ["RegistrationAgent"]

log = logging.getLogger("aygolog.server.agent")


class RegistrationAgent:
    """Keeps one instance registered with one load balancer.

    Args:
        lb_url: the load balancer's base URL, e.g. `http://10.0.0.7:8080`.
        registration: what to register (name, advertised URL, ...).
        token: the shared registration token, or None.
        interval: seconds between heartbeats.
        report: a dict kept up to date with the agent's state, for `/health/ready`.
    """

    def __init__(
        self,
        *,
        lb_url: str,
        registration: Registration,
        token: str | None = None,
        interval: float = 2.0,
        report: dict[str, Any] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.lb_url = lb_url.rstrip("/")
        self.registration = registration
        self.interval = interval
        self.report = report if report is not None else {}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            base_url=self.lb_url, headers=headers, timeout=httpx.Timeout(3.0), transport=transport
        )
        self._task: asyncio.Task[None] | None = None
        self.registered = asyncio.Event()
        self._set(state="starting")

    def _set(self, **values: Any) -> None:
        self.report.update(values, lb_url=self.lb_url, name=self.registration.name)

    async def start(self) -> None:
        """Begin registering and heartbeating in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="aygolog-registration")

    async def stop(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Stop heartbeating and deregister (best effort, within `timeout`)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.registered.is_set():
            try:
                await asyncio.wait_for(
                    self._client.delete(f"/api/registration/{self.registration.name}"), timeout
                )
                self._set(state="deregistered")
            except (httpx.HTTPError, TimeoutError) as exc:
                log.warning("could not deregister from %s: %s", self.lb_url, exc)
            self.registered.clear()
        await self._client.aclose()

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            if not self.registered.is_set():
                if await self._register():
                    backoff = 0.5
                else:
                    await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, 15.0)
                    continue
            await asyncio.sleep(self.interval)
            await self._heartbeat()

    async def _register(self) -> bool:
        try:
            response = await self._client.post(
                "/api/registration",
                content=msgspec.json.encode(self.registration),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            self._set(state="retrying", error=f"load balancer unreachable: {exc}")
            log.info("registration with %s failed (%s); retrying", self.lb_url, exc)
            return False
        if response.is_success:
            self.registered.set()
            self._set(state="registered", error=None)
            log.info("registered as %s with %s", self.registration.name, self.lb_url)
            return True
        error = f"load balancer answered {response.status_code}: {response.text[:200]}"
        self._set(state="retrying", error=error)
        log.warning("registration refused: %s", error)
        return False

    async def _heartbeat(self) -> None:
        try:
            response = await self._client.put(
                f"/api/registration/{self.registration.name}/heartbeat"
            )
        except httpx.HTTPError as exc:
            self._set(state="registered", error=f"heartbeat failed: {exc}")
            return
        if response.status_code == 404:
            # The LB does not know us (it restarted, or we expired): register again now.
            log.info("the load balancer forgot %s; registering again", self.registration.name)
            self.registered.clear()
            self._set(state="re-registering")
        elif response.is_success:
            self._set(state="registered", error=None)
        else:
            self._set(error=f"heartbeat answered {response.status_code}")
