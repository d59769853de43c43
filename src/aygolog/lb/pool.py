"""`InstancePool`: the load balancer's local snapshot of the Log API instances, and the picker
the proxy calls for every request.

The snapshot is loaded from `registry.instances()` at start and kept current by the registry's
`watch()` events plus a poll every `poll_interval` (1 s; `AYGOLOG_REGISTRY_POLL_INTERVAL`),
which also calls `registry.sweep()`, so expiries are announced: picking an instance makes no
Redis call.

An instance receives new requests while it is **routable**: its heartbeat is within the TTL, the
active health check has not marked it unhealthy, it is not ejected, not deregistered and its
weight is above 0. The balancing strategy chooses among the routable instances; `started` and
`finished` keep its outstanding/served counts.

Passive outlier ejection, after Envoy's `consecutive_gateway_failure`: only answers that say the
instance itself is broken count against it (`aygolog.lb.outliers.classify`):

- a connection that could not be made (refused, timed out, unreachable) ejects it at once;
- a reset or cut connection, no response within the response timeout, an invalid response, or a
  502/504 from it eject it after `failures_to_eject` (3) of them in a row;
- any other answer clears the streak: a 4xx blames the request, a 503 (with Retry-After, from
  the Log API) blames a dependency every instance shares (Redis down, full or overloaded), and
  a 500 is a bug reached by one request, which every instance runs the same code for. Ejecting
  for those turns one bad client or one Redis hiccup into a total outage. (An instance broken as
  a whole is still caught by connect errors, timeouts and the active health check.)

An ejection lasts `ejection_base` seconds (5 s); an instance ejected again within `ejection_reset`
seconds of its last ejection ending stays out twice as long as last time (up to `ejection_max`).
At most `max_ejected_fraction` (50%) of the live instances are ejected at once, and at least one
may be (as Envoy); an ejection over the cap is skipped and counted
(`aygolog_lb_ejections_overflow_total`). The load balancer's settings set these
(`aygolog.lb.app.pool_options_from`).

**Panic mode** (Envoy's healthy panic threshold at 0%): when no live instance is routable (all
ejected or failing their health checks), the pool picks among every live instance anyway rather
than refusing every request with 503: a wrong verdict (say, every instance failing its probes
while Redis restarts) then costs some failed requests, not all of them. It is logged once when it
begins and once when it ends, and shown as `aygolog_lb_panic` (1/0) and
`aygolog_lb_panic_requests_total` in /metrics and `panic` in the load balancer's /health.

An instance failing `unhealthy_threshold` active probes in a row is `unhealthy`: listed with that
status and given no new request until it passes `healthy_threshold` in a row.

An instance whose heartbeats reach this load balancer stays alive even when the registry cannot
record them (Redis full, down or overloaded: `heard`), so that when Redis comes back the first
sweep does not find every heartbeat too old and expire every instance at once.

A deregistered instance leaves the candidates at once; it is listed as `draining` until its
in-flight requests have finished, then forgotten.

With several workers (`aygolog lb --workers N`, see `aygolog.lb.workers`) each worker has its own
pool: `on_ejected` tells the others of an ejection decided here, and `eject` applies one decided
by another worker (within the same cap, not counted again in `aygolog_lb_ejections_total`);
`export_state`/`import_state` give a restarted worker the others' ejections and probe verdicts.

Where the pool connects: the registration's `ip` when it is an IP address (the load balancer sets
it to the address it checked against the allowed networks when the instance registered, see
`aygolog.lb.networks.check_network`), else the URL's host. So a name that resolves elsewhere later
(DNS rebinding) cannot move the traffic or the health checks; the name stays in the listing and
in the `Host` header of health probes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import math
import random
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlsplit

from aygolog.balancing import BalancerStrategy
from aygolog.errors import NoHealthyInstance, Unavailable
from aygolog.lb.outliers import Verdict, classify
from aygolog.metrics import Metrics
from aygolog.models import (
    EventKind,
    InstanceStatus,
    InstanceView,
    RegistryEvent,
    ServiceInstance,
)
from aygolog.registry import ServiceRegistry

__all__ = ["InstancePool", "InstanceView", "MemberState", "PoolOptions", "Upstream"]

log = logging.getLogger("aygolog.lb.pool")

_RETRY_AFTER: Final = 1.0
_WATCH_BACKOFF_FIRST: Final = 0.1
_WATCH_BACKOFF_MAX: Final = 5.0


@dataclass(frozen=True, slots=True)
class Upstream:
    """One instance's name and address, as handed to the proxy (its `Target`).

    `host` is the address to connect to: the IP address checked at registration when there is
    one, else the URL's host name.
    """

    name: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """How the pool follows the registry, judges health and ejects failing instances.

    Args:
        poll_interval: seconds between `sweep()` + `instances()` reloads (the safety net under
            the watch's events).
        ejection_base: seconds an instance is ejected for the first time.
        ejection_max: the longest ejection.
        ejection_reset: an ejection starting within this many seconds of the previous one's end
            lasts twice as long as the previous one; later, it starts again from the base.
        max_ejected_fraction: at most this share of the live instances ejected at once (at
            least one, unless 0).
        failures_to_eject: gateway failures in a row (reset, timeout, invalid response,
            502/504) that eject an instance; a connect failure ejects at once.
        failure_window: `recent_failures` in the listing counts failures this many seconds back.
        healthy_threshold: consecutive passed health probes that make an unhealthy instance
            healthy again.
        unhealthy_threshold: consecutive failed health probes that make an instance unhealthy.
        heartbeat_ttl: an instance heard from (a heartbeat to this load balancer) within this
            many seconds is alive whatever the registry's record says.
    """

    poll_interval: float = 1.0
    ejection_base: float = 5.0
    ejection_max: float = 300.0
    ejection_reset: float = 60.0
    max_ejected_fraction: float = 0.5
    failures_to_eject: int = 3
    failure_window: float = 60.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    heartbeat_ttl: float = 6.0


@dataclass(frozen=True, slots=True)
class MemberState:
    """One instance's shared verdicts, as one worker tells another (`export_state`).

    Args:
        instance: the registry's record.
        ejected_for: seconds its ejection still lasts (0: not ejected).
        ejection_length: the length of its last ejection (the next one doubles it).
        probe_ok: whether it passes its health checks.
        probe_passes: passed probes in a row.
        probe_fails: failed probes in a row.
        heard_ago: seconds since its last heartbeat reached the load balancer (None: never).
    """

    instance: ServiceInstance
    ejected_for: float
    ejection_length: float
    probe_ok: bool
    probe_passes: int
    probe_fails: int
    heard_ago: float | None


class _Member:
    """What the pool knows of one instance. `weight` and `name` make it a strategy `Backend`."""

    __slots__ = (
        "alive",
        "deregistered",
        "ejected_until",
        "ejection_ended",
        "ejection_length",
        "ejections",
        "failure_streak",
        "failures",
        "heard_at",
        "instance",
        "name",
        "probe_fails",
        "probe_ok",
        "probe_passes",
        "target",
        "weight",
    )

    def __init__(self, instance: ServiceInstance) -> None:
        self.name = instance.name
        self.instance = instance
        self.target = _target(instance)
        self.weight = instance.weight
        self.alive = instance.status is InstanceStatus.HEALTHY
        self.deregistered = False
        self.probe_ok = True
        self.probe_passes = 0
        self.probe_fails = 0
        self.ejected_until = 0.0  # monotonic; in the past when not ejected
        self.ejection_ended = -math.inf
        self.ejection_length = 0.0
        self.ejections = 0
        self.failure_streak = 0
        self.failures: collections.deque[float] = collections.deque(maxlen=1000)
        self.heard_at = -math.inf  # monotonic: its last heartbeat to this load balancer

    def update(self, instance: ServiceInstance) -> None:
        """Take a fresher record of the instance (address, weight, heartbeat, status)."""
        if instance.url != self.instance.url or instance.ip != self.instance.ip:
            self.target = _target(instance)
            self.probe_ok, self.probe_passes, self.probe_fails = True, 0, 0
        self.instance = instance
        self.weight = instance.weight
        self.alive = instance.status is InstanceStatus.HEALTHY
        self.deregistered = False

    def came_back(self) -> None:
        """It registered anew (restarted, or returned after expiring): forget its bad record."""
        self.probe_ok, self.probe_passes, self.probe_fails = True, 0, 0
        self.ejected_until = 0.0
        self.ejection_length = 0.0
        self.ejection_ended = -math.inf
        self.failure_streak = 0

    def routable(self, now: float) -> bool:
        return (
            self.alive
            and self.probe_ok
            and not self.deregistered
            and self.weight > 0
            and self.ejected_until <= now
        )


def _target(instance: ServiceInstance) -> Upstream:
    parts = urlsplit(instance.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Upstream(name=instance.name, host=connect_host(instance), port=port)


def connect_host(instance: ServiceInstance) -> str:
    """The address to connect to for an instance: its `ip` if that is an IP address (the one
    checked at registration), else the host of its URL."""
    if instance.ip:
        try:
            return str(ipaddress.ip_address(instance.ip))
        except ValueError:
            pass
    return urlsplit(instance.url).hostname or ""


class InstancePool:
    """The local snapshot of registered instances, and the proxy's picker.

    Args:
        registry: where instances register; read at `start()`, then followed.
        strategy: chooses among the routable instances; its counts are the in-flight/served
            figures of the listing.
        options: polling, ejection and health-check thresholds.
        metrics: where request, retry and ejection metrics go (a private registry when None).
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        registry: ServiceRegistry,
        strategy: BalancerStrategy,
        *,
        options: PoolOptions | None = None,
        metrics: Metrics | None = None,
        clock: collections.abc.Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.strategy = strategy
        self.options = options or PoolOptions()
        self._clock = clock
        self._members: dict[str, _Member] = {}
        self._candidates: list[_Member] = []
        self.panic = False
        """True while no instance is routable and the pool picks among every live one."""
        self._recheck_at = math.inf
        self._tasks: list[asyncio.Task[None]] = []
        self._loaded = asyncio.Event()
        self._tried = asyncio.Event()  # the first load has succeeded or failed
        self._reloading = asyncio.Lock()
        self._events_seen = 0
        self._touched: set[str] = set()
        self.registry_error: str | None = None
        """Why the registry cannot be read right now, or None while it answers."""
        self.on_ejected: Callable[[str, str, float], None] | None = None
        """Called with (name, url, seconds) when this pool ejects an instance (not when it
        applies another worker's ejection): how the other workers hear of it."""
        self.last_sync: float | None = None
        """Monotonic time of the last successful reload."""
        metrics = metrics or Metrics()
        self.metrics = metrics
        self._requests = metrics.counter(
            "aygolog_lb_requests_total",
            "Proxied requests by instance and status (0: no response)",
            ("instance", "status"),
        )
        self._latency = metrics.histogram(
            "aygolog_lb_request_seconds", "Proxied request latency by instance", ("instance",)
        )
        self._retries = metrics.counter(
            "aygolog_lb_retries_total", "Requests sent again to another instance"
        )
        self._ejections = metrics.counter(
            "aygolog_lb_ejections_total", "Passive ejections by instance", ("instance",)
        )
        self._unavailable = metrics.counter(
            "aygolog_lb_no_healthy_instance_total", "Requests refused: no routable instance"
        )
        self._overflow = metrics.counter(
            "aygolog_lb_ejections_overflow_total",
            "Ejections skipped because the max-ejected share was reached, by instance",
            ("instance",),
        )
        self._panic_requests = metrics.counter(
            "aygolog_lb_panic_requests_total",
            "Requests sent while no instance was routable (panic mode: to any live instance)",
        )
        metrics.gauge(
            "aygolog_lb_panic",
            "1 while no instance is routable and requests go to every live instance",
            read=lambda: {(): 1.0 if self._panic_now() else 0.0},
        )
        metrics.gauge(
            "aygolog_lb_healthy_instances",
            "Instances that can receive requests now",
            read=lambda: {(): float(len(self.routable()))},
        )
        metrics.gauge(
            "aygolog_lb_instances",
            "Instances known to this load balancer by status",
            ("status",),
            read=self._status_counts,
        )
        metrics.gauge(
            "aygolog_lb_in_flight",
            "Requests in flight by instance",
            ("instance",),
            read=lambda: {
                (name,): float(self.strategy.outstanding(name)) for name in self._members
            },
            merge="sum",  # each worker has its own requests in flight
        )

    # -- the proxy's picker (the hot path: no I/O, no awaits) --------------------------------

    def pick(self, exclude: Collection[str] = ()) -> Upstream:
        """The instance for the next request, by the strategy, among the routable ones (in
        panic mode, when none is routable, among every live one).

        Args:
            exclude: names already tried for this request (a retry goes elsewhere).

        Raises:
            NoHealthyInstance: no routable instance (other than those excluded).
        """
        now = self._clock()
        if now >= self._recheck_at:
            self._rebuild(now)
        candidates = self._candidates
        if self.panic:
            self._panic_requests.inc()
        if exclude:
            self._retries.inc()
            candidates = [m for m in candidates if m.name not in exclude]
        if not candidates:
            self._unavailable.inc()
            if exclude:
                raise NoHealthyInstance(
                    "no other healthy Log API instance to retry on", retry_after=_RETRY_AFTER
                )
            raise NoHealthyInstance("no healthy Log API instance", retry_after=_RETRY_AFTER)
        return self.strategy.pick(candidates).target

    def started(self, name: str) -> None:
        """A request is being sent to the named instance."""
        self.strategy.start(name)

    def finished(
        self, name: str, status: int | None, seconds: float, error: object | None = None
    ) -> None:
        """A request to the named instance ended.

        Args:
            name: the instance.
            status: the upstream's HTTP status, or None/0 when no response came.
            seconds: how long it took.
            error: why it failed without a response (connect error, reset, timeout), or None.
        """
        self.strategy.finish(name)
        code = status or 0
        self._requests.inc(name, _STATUS_TEXT.get(code) or str(code))
        self._latency.observe(seconds, name)
        member = self._members.get(name)
        if member is None:
            return
        verdict = classify(code, error)
        if verdict is Verdict.ANSWERED:
            if member.failure_streak:
                member.failure_streak = 0
        elif verdict is not Verdict.UNKNOWN:
            self._failed(member, self._clock(), verdict, error or code)
        if member.deregistered and self.strategy.outstanding(name) == 0:
            self._forget(name)

    # -- state changes ------------------------------------------------------------------------

    def _failed(self, member: _Member, now: float, verdict: Verdict, why: object) -> None:
        member.failures.append(now)
        member.failure_streak += 1
        if member.ejected_until > now:
            return
        if (
            verdict is not Verdict.CONNECT_FAILURE
            and member.failure_streak < self.options.failures_to_eject
        ):
            return
        if not self._may_eject(now):
            self._overflow.inc(member.name)
            return
        opts = self.options
        again = now - member.ejection_ended <= opts.ejection_reset
        length = min(member.ejection_length * 2, opts.ejection_max) if again else opts.ejection_base
        length = max(length, opts.ejection_base)
        member.ejection_length = length
        member.ejected_until = now + length
        member.ejection_ended = now + length
        member.ejections += 1
        member.failure_streak = 0
        self._ejections.inc(member.name)
        log.warning(
            "ejected %s for %.0f s after %s (%s; ejection #%d)",
            member.name,
            length,
            "a connect failure" if verdict is Verdict.CONNECT_FAILURE else "gateway failures",
            why,
            member.ejections,
        )
        self._rebuild(now)
        if self.on_ejected is not None:
            self.on_ejected(member.name, member.instance.url, length)

    def eject(self, name: str, url: str, seconds: float) -> bool:
        """Apply an ejection another worker decided: the instance at `url` gets no new request
        for `seconds`, unless that would pass the max-ejected share here. Returns whether it
        was applied (or it was already ejected at least that long)."""
        member = self._members.get(name)
        if member is None or member.instance.url != url or seconds <= 0:
            return False
        now = self._clock()
        until = now + seconds
        if member.ejected_until > now:
            if until > member.ejected_until:
                member.ejected_until = member.ejection_ended = until
                member.ejection_length = max(member.ejection_length, seconds)
            return True
        if not self._may_eject(now):
            return False
        member.ejection_length = seconds
        member.ejected_until = member.ejection_ended = until
        member.ejections += 1
        member.failure_streak = 0
        log.info("%s ejected for %.0f s by another worker", name, seconds)
        self._rebuild(now)
        return True

    def export_state(self) -> list[MemberState]:
        """Every live instance's ejection and health-check verdicts, for a restarted worker."""
        now = self._clock()
        return [
            MemberState(
                instance=m.instance,
                ejected_for=max(0.0, m.ejected_until - now),
                ejection_length=m.ejection_length,
                probe_ok=m.probe_ok,
                probe_passes=m.probe_passes,
                probe_fails=m.probe_fails,
                heard_ago=None if m.heard_at == -math.inf else now - m.heard_at,
            )
            for m in self._members.values()
            if not m.deregistered
        ]

    def import_state(self, states: Iterable[MemberState]) -> None:
        """Take another worker's verdicts (`export_state`): its ejections and failing health
        checks, and the instances it knows that this pool has not read yet (the registry may be
        down while this worker starts)."""
        now = self._clock()
        for state in states:
            inst = state.instance
            member = self._members.get(inst.name)
            if member is None:
                if self.loaded:
                    continue  # the registry, read here, no longer has it
                member = self._members[inst.name] = _Member(inst)
            elif member.instance.url != inst.url:
                continue
            if state.ejected_for > 0 and member.ejected_until <= now:
                member.ejected_until = member.ejection_ended = now + state.ejected_for
            # So that its next ejection here doubles the last one, as in the other worker.
            member.ejection_length = max(member.ejection_length, state.ejection_length)
            member.probe_ok = state.probe_ok
            member.probe_passes = state.probe_passes
            member.probe_fails = state.probe_fails
            if state.heard_ago is not None:
                member.heard_at = max(member.heard_at, now - state.heard_ago)
                self._keep_if_heard(member)
        self._rebuild(now)

    def _may_eject(self, now: float) -> bool:
        """Whether one more instance may be ejected: at most `max_ejected_fraction` of the live
        instances are out at once, and at least one may be (unless the fraction is 0)."""
        fraction = self.options.max_ejected_fraction
        if fraction <= 0:
            return False
        live = [m for m in self._members.values() if m.alive and not m.deregistered]
        ejected = sum(1 for m in live if m.ejected_until > now)
        cap = max(1, math.floor(len(live) * fraction + 1e-9))
        return ejected < cap

    def record_probe(
        self, name: str, url: str, ok: bool, *, target: Upstream | None = None
    ) -> None:
        """The result of one active health probe of the named instance at `url` (connected to
        `target`, when given)."""
        member = self._members.get(name)
        if member is None or member.instance.url != url:
            return  # gone, or re-registered elsewhere while the probe ran
        if target is not None and target != member.target:
            return  # re-registered at another address while the probe ran
        opts = self.options
        if ok:
            member.probe_passes += 1
            member.probe_fails = 0
            if not member.probe_ok and member.probe_passes >= opts.healthy_threshold:
                member.probe_ok = True
                log.info("%s passes its health checks again", name)
                self._rebuild(self._clock())
        else:
            member.probe_fails += 1
            member.probe_passes = 0
            if member.probe_ok and member.probe_fails >= opts.unhealthy_threshold:
                member.probe_ok = False
                log.warning("%s failed %d health checks: unhealthy", name, member.probe_fails)
                self._rebuild(self._clock())

    def apply(self, event: RegistryEvent) -> None:
        """Apply one registry change."""
        self._events_seen += 1
        self._touched.add(event.name)
        if event.kind is EventKind.DEREGISTERED:
            self._remove(event.name)
        elif event.instance is not None:
            # `registered` and `updated` both come from an instance announcing itself (at start,
            # or after the registry forgot it), or from a heartbeat after it had expired: a fresh
            # process, so its old ejection and health-check record no longer apply.
            self.observe(event.instance, came_back=event.kind is not EventKind.EXPIRED)
        self._rebuild(self._clock())

    def observe(self, instance: ServiceInstance, *, came_back: bool = False) -> None:
        """Take a fresh record of one instance (from an event, or a registration answered here).

        Args:
            instance: the registry's record, with its status.
            came_back: it registered anew: clear its ejection and health-check record.
        """
        member = self._members.get(instance.name)
        if member is None:
            member = self._members[instance.name] = _Member(instance)
            log.info("instance %s at %s joined", instance.name, instance.url)
        else:
            was_alive = member.alive and not member.deregistered
            member.update(instance)
            self._keep_if_heard(member)
            if came_back:
                member.came_back()
                if not was_alive:
                    log.info("instance %s at %s is back", instance.name, instance.url)
        self._rebuild(self._clock())

    def replace(self, instances: Iterable[ServiceInstance], *, keep: Collection[str] = ()) -> None:
        """Take a full snapshot of the registry: add, update and remove to match it.

        Args:
            instances: every registered instance.
            keep: names whose local state is newer than the snapshot (changed by an event that
                arrived while the snapshot was being read): left as they are.
        """
        seen: set[str] = set()
        for instance in instances:
            seen.add(instance.name)
            if instance.name in keep:
                continue
            member = self._members.get(instance.name)
            if member is None:
                self._members[instance.name] = _Member(instance)
            else:
                alive = instance.status is InstanceStatus.HEALTHY or self._heard_lately(member)
                if member.alive and not alive:
                    log.warning("instance %s expired (no heartbeat)", instance.name)
                back = alive and not member.alive
                member.update(instance)
                member.alive = alive
                if back:
                    member.came_back()
        for name in list(self._members):
            if name not in seen and name not in keep:
                self._remove(name)
        self._rebuild(self._clock())

    def heard(self, name: str) -> None:
        """The named instance sent this load balancer a heartbeat (whether or not the registry
        could record it): it is alive for `heartbeat_ttl` seconds whatever the registry says."""
        member = self._members.get(name)
        if member is None:
            return
        member.heard_at = self._clock()
        if not member.alive:
            member.alive = True
            log.info("instance %s is heartbeating again", name)
            self._rebuild(member.heard_at)

    def _heard_lately(self, member: _Member) -> bool:
        return self._clock() - member.heard_at < self.options.heartbeat_ttl

    def _keep_if_heard(self, member: _Member) -> None:
        if not member.alive and self._heard_lately(member):
            member.alive = True

    def remove(self, name: str) -> None:
        """The instance left: no new requests from now on; forgotten once its requests end."""
        self._remove(name)
        self._rebuild(self._clock())

    def _remove(self, name: str) -> None:
        member = self._members.get(name)
        if member is None or member.deregistered:
            return
        if self.strategy.outstanding(name) > 0:
            member.deregistered = True  # no new requests; listed as draining until they end
            log.info("instance %s left; draining its in-flight requests", name)
        else:
            self._forget(name)
            log.info("instance %s left", name)

    def _forget(self, name: str) -> None:
        self._members.pop(name, None)
        self.strategy.forget(name)
        self._rebuild(self._clock())

    def _rebuild(self, now: float) -> None:
        members = self._members.values()
        candidates = [m for m in members if m.routable(now)]
        panic = False
        if not candidates:
            candidates = [m for m in members if _live(m)]
            panic = bool(candidates)
        candidates.sort(key=lambda m: m.name)
        self._candidates = candidates
        pending = [m.ejected_until for m in members if m.ejected_until > now]
        self._recheck_at = min(pending, default=math.inf)
        if panic != self.panic:
            self.panic = panic
            if panic:
                counts = self.counts()
                log.warning(
                    "PANIC: no instance is routable (%d ejected, %d failing health checks);"
                    " sending requests to all %d live instances until one is healthy again",
                    counts[InstanceStatus.EJECTED.value],
                    counts[InstanceStatus.UNHEALTHY.value],
                    len(candidates),
                )
            elif candidates:
                log.warning("panic over: %d instance(s) routable again", len(candidates))
            else:
                log.warning("panic over: no live instance left")

    def _panic_now(self) -> bool:
        now = self._clock()
        if now >= self._recheck_at:
            self._rebuild(now)
        return self.panic

    # -- following the registry -----------------------------------------------------------

    async def start(self) -> None:
        """Load the snapshot and start following the registry.

        Returns once the first load has succeeded or failed (at most 5 s): the load balancer
        starts even when the registry cannot be reached, and keeps trying in the background.
        """
        self._tasks = [
            asyncio.create_task(self._follow(), name="aygolog-lb-watch"),
            asyncio.create_task(self._poll(), name="aygolog-lb-poll"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tried.wait(), 5.0)

    async def aclose(self) -> None:
        """Stop following the registry."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reload(self) -> None:
        """Read the whole registry and take it as the snapshot.

        Raises:
            Unavailable: the registry cannot be read.
        """
        async with self._reloading:
            seen_before = self._events_seen
            self._touched.clear()
            instances = await self.registry.instances()
            keep = set(self._touched) if self._events_seen != seen_before else set()
            self.replace(instances, keep=keep)
        self.last_sync = self._clock()
        if self.registry_error is not None:
            log.warning("the registry answers again")
        self.registry_error = None
        self._loaded.set()
        self._tried.set()

    async def _follow(self) -> None:
        backoff = _WATCH_BACKOFF_FIRST
        while True:
            try:
                async with self.registry.watch() as events:
                    await self.reload()  # after subscribing, so no change falls in between
                    backoff = _WATCH_BACKOFF_FIRST
                    async for event in events:
                        self.apply(event)
                return  # the registry was closed
            except Unavailable as exc:
                self._registry_failed(exc)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, _WATCH_BACKOFF_MAX)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.options.poll_interval)
            try:
                await self.registry.sweep()
                await self.reload()
            except Unavailable as exc:
                self._registry_failed(exc)

    def _registry_failed(self, exc: Unavailable) -> None:
        self._tried.set()
        if self.registry_error is None:
            log.warning("the registry cannot be read (%s); routing from the last snapshot", exc)
        self.registry_error = str(exc) or type(exc).__name__

    # -- reading ------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the snapshot has been loaded from the registry at least once."""
        return self._loaded.is_set()

    def sync_age(self) -> float | None:
        """Seconds since the registry was last read in full, or None if it never was."""
        return None if self.last_sync is None else self._clock() - self.last_sync

    def routable(self) -> list[str]:
        """Names of the instances that are healthy now (in panic mode: none, yet some live
        instances still get requests)."""
        return self._routable(self._clock())

    def _routable(self, now: float) -> list[str]:
        return [m.name for m in self._members.values() if m.routable(now)]

    def in_panic(self) -> bool:
        """Whether the pool is in panic mode now: no routable instance, some live ones."""
        return self._panic_now()

    def views(self) -> list[InstanceView]:
        """Every known instance with its status and counts, sorted by name."""
        now = self._clock()
        wall = datetime.now(UTC)
        window = now - self.options.failure_window
        views = []
        for name in sorted(self._members):
            m = self._members[name]
            inst = m.instance
            ejected_until = None
            if m.ejected_until > now:
                ejected_until = wall + timedelta(seconds=m.ejected_until - now)
            views.append(
                InstanceView(
                    name=name,
                    url=inst.url,
                    status=self._status(m, now),
                    weight=m.weight,
                    heartbeat_age=round(max(0.0, inst.heartbeat_age(wall)), 3),
                    last_heartbeat=inst.last_heartbeat,
                    registered_at=inst.registered_at,
                    in_flight=self.strategy.outstanding(name),
                    served=self.strategy.served(name),
                    recent_failures=sum(1 for t in m.failures if t >= window),
                    ejections=m.ejections,
                    health_check="passing" if m.probe_ok else "failing",
                    ejected_until=ejected_until,
                    ip=inst.ip,
                    port=inst.port,
                    metadata=inst.metadata,
                )
            )
        return views

    def probe_targets(self) -> list[tuple[str, str, Upstream]]:
        """(name, url, where to connect) of every instance the health checker should probe."""
        return [
            (m.name, m.instance.url, m.target)
            for m in self._members.values()
            if m.alive and not m.deregistered
        ]

    def counts(self) -> dict[str, int]:
        """How many instances are in each status."""
        counts = dict.fromkeys(_STATUSES, 0)
        now = self._clock()
        for member in self._members.values():
            counts[self._status(member, now)] += 1
        return counts

    def _status_counts(self) -> dict[tuple[str, ...], float]:
        return {(status,): float(n) for status, n in self.counts().items()}

    @staticmethod
    def _status(member: _Member, now: float) -> str:
        if member.deregistered or member.weight <= 0:
            return InstanceStatus.DRAINING.value
        if not member.alive:
            return InstanceStatus.EXPIRED.value
        if member.ejected_until > now:
            return InstanceStatus.EJECTED.value
        if not member.probe_ok:
            return InstanceStatus.UNHEALTHY.value
        return InstanceStatus.HEALTHY.value


def _live(member: _Member) -> bool:
    """Heartbeating, registered and with a weight: a candidate in panic mode."""
    return member.alive and not member.deregistered and member.weight > 0


_STATUSES: Final = (
    InstanceStatus.HEALTHY.value,
    InstanceStatus.EJECTED.value,
    InstanceStatus.UNHEALTHY.value,
    InstanceStatus.EXPIRED.value,
    InstanceStatus.DRAINING.value,
)
_STATUS_TEXT: Final = {code: str(code) for code in range(100, 600)}
