"""The bus between the load balancer's workers: UNIX datagrams, no Redis.

Each worker (`aygolog.lb.workers`) binds `w<index>.sock` in a private directory the supervisor
made, and sends each message to the others' sockets (msgpack, one datagram each). A message to a
worker that is gone or restarting, or whose queue is full, is dropped (counted in
`aygolog_lb_bus_dropped_total`): nothing waits on the bus but a scrape, and that only for
`METRICS_WAIT` seconds. The bus works while Redis is down, so the workers keep one view of the
instances then too.

What goes over it:

- `Eject`: a worker ejected an instance (passive health); the others eject it as long.
- `Probe`: the result of an active health probe; each instance is probed by one worker.
- `Observe`, `Heard`, `Remove`: a registration, heartbeat or deregistration that one worker
  answered; the others apply it at once (they also see it as a Redis event, when Redis is up;
  `Heard` matters when it is not).
- `Hello` -> `Sync`: a (re)started worker asks the others for their ejections and verdicts.
- `MetricsAsk` -> `MetricsReply`: the worker answering `/metrics` gathers the others' values.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from aygolog.lb.pool import InstancePool, MemberState, Upstream
from aygolog.metrics import Metrics, Snapshot
from aygolog.models import ServiceInstance

__all__ = ["METRICS_WAIT", "WorkerBus", "WorkerInfo"]

log = logging.getLogger("aygolog.lb.bus")

METRICS_WAIT: Final = 0.5
"""Seconds a scrape waits for the other workers' values; one that is late is left out."""
_MAX_DATAGRAM: Final = 4 * 1024 * 1024
_BUFFER: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """Which worker this process is.

    Args:
        index: 0 .. count-1.
        count: how many workers the supervisor runs.
        bus_dir: the directory of the workers' bus sockets.
        supervisor: the supervisor's PID (the worker ends when it does).
    """

    index: int
    count: int
    bus_dir: str
    supervisor: int

    def path(self, index: int) -> str:
        """The bus socket of worker `index`."""
        return str(Path(self.bus_dir) / f"w{index}.sock")

    def owns(self, name: str) -> bool:
        """Whether this worker probes the instance `name` (each instance has exactly one)."""
        return zlib.crc32(name.encode()) % self.count == self.index


class Hello(msgspec.Struct, tag="hello", frozen=True):
    pass


class Sync(msgspec.Struct, tag="sync", frozen=True):
    members: list[MemberState]


class Eject(msgspec.Struct, tag="eject", frozen=True):
    name: str
    url: str
    seconds: float


class Probe(msgspec.Struct, tag="probe", frozen=True):
    name: str
    url: str
    host: str
    port: int
    ok: bool


class Observe(msgspec.Struct, tag="observe", frozen=True):
    instance: ServiceInstance
    came_back: bool


class Heard(msgspec.Struct, tag="heard", frozen=True):
    name: str


class Remove(msgspec.Struct, tag="remove", frozen=True):
    name: str


class MetricsAsk(msgspec.Struct, tag="metrics?", frozen=True):
    ask: int


class MetricsReply(msgspec.Struct, tag="metrics", frozen=True):
    ask: int
    values: dict[str, list[list[Any]]]


Message = Hello | Sync | Eject | Probe | Observe | Heard | Remove | MetricsAsk | MetricsReply


class _Envelope(msgspec.Struct, array_like=True, frozen=True):
    sender: int
    message: Message


_ENCODE: Final = msgspec.msgpack.Encoder()
_DECODE: Final = msgspec.msgpack.Decoder(_Envelope)


class WorkerBus:
    """One worker's end of the bus: sends its news to the others, applies theirs to its pool.

    Args:
        worker: which worker this is.
        pool: the pool whose ejections, probes and registrations are shared.
        metrics: this worker's metrics (their snapshot answers the others' scrapes).
    """

    def __init__(self, worker: WorkerInfo, pool: InstancePool, metrics: Metrics) -> None:
        self.worker = worker
        self.pool = pool
        self.metrics = metrics
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._asks = itertools.count(1)
        self._pending: dict[int, _Gathering] = {}
        self.reporting = 1
        """Workers whose values the last scrape merged (this one included)."""
        self._dropped = metrics.counter(
            "aygolog_lb_bus_dropped_total",
            "Messages to other workers that could not be delivered (gone, restarting, full)",
        )
        self._buffer = bytearray(_MAX_DATAGRAM)

    # -- life ------------------------------------------------------------------------------

    def open(self) -> None:
        """Bind this worker's socket and start receiving."""
        path = self.worker.path(self.worker.index)
        os.makedirs(self.worker.bus_dir, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's predecessor
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, _BUFFER)
        sock.bind(path)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self.pool.on_ejected = self.ejected

    def close(self) -> None:
        """Stop receiving and remove this worker's socket."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.worker.path(self.worker.index))
        with contextlib.suppress(OSError):  # the last one out (a supervisor killed by SIGKILL
            os.rmdir(self.worker.bus_dir)  # cannot remove it), only once it is empty
        for gathering in self._pending.values():
            gathering.done.set()

    # -- news from this worker -------------------------------------------------------------

    def hello(self) -> None:
        """Ask the other workers for their ejections and health verdicts (after a restart)."""
        self._send(Hello())

    def ejected(self, name: str, url: str, seconds: float) -> None:
        """This worker ejected an instance (the pool's `on_ejected`)."""
        self._send(Eject(name=name, url=url, seconds=seconds))

    def probed(self, name: str, url: str, target: Upstream, ok: bool) -> None:
        """This worker probed an instance (the health checker's `on_result`)."""
        self._send(Probe(name=name, url=url, host=target.host, port=target.port, ok=ok))

    def observed(self, instance: ServiceInstance, *, came_back: bool = False) -> None:
        """This worker answered a registration or heartbeat of `instance`."""
        self._send(Observe(instance=instance, came_back=came_back))

    def heard(self, name: str) -> None:
        """A heartbeat of `name` reached this worker."""
        self._send(Heard(name=name))

    def removed(self, name: str) -> None:
        """This worker answered the deregistration of `name`."""
        self._send(Remove(name=name))

    async def gather_metrics(self, wait: float = METRICS_WAIT) -> list[Snapshot]:
        """The other workers' metric values, as many as answer within `wait` seconds."""
        peers = [i for i in range(self.worker.count) if i != self.worker.index]
        gathering = _Gathering()
        if peers and self._sock is not None:
            ask = next(self._asks)
            self._pending[ask] = gathering
            try:
                gathering.expected = sum(self._send(MetricsAsk(ask=ask), to=i) for i in peers)
                if gathering.expected:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await gathering.done.wait()
            finally:
                self._pending.pop(ask, None)
        self.reporting = 1 + len(gathering.found)
        return list(gathering.found)

    # -- the wire ---------------------------------------------------------------------------

    def _send(self, message: Message, to: int | None = None) -> int:
        """Send to worker `to`, or to every other worker; returns how many sends succeeded."""
        sock = self._sock
        if sock is None:
            return 0
        data = _ENCODE.encode(_Envelope(sender=self.worker.index, message=message))
        targets = [to] if to is not None else range(self.worker.count)
        sent = 0
        for i in targets:
            if i == self.worker.index:
                continue
            try:
                sock.sendto(data, self.worker.path(i))
                sent += 1
            except OSError:  # gone, restarting, its queue full, or too big
                self._dropped.inc()
        return sent

    def _readable(self) -> None:
        sock = self._sock
        for _ in range(256):  # then let the loop serve requests again
            if sock is None:
                return
            try:
                size = sock.recv_into(self._buffer)
            except OSError:  # nothing more to read now (BlockingIOError), or closed
                return
            try:
                envelope = _DECODE.decode(memoryview(self._buffer)[:size])
            except msgspec.DecodeError:
                log.warning("dropped a malformed message on the workers' bus")
                continue
            try:
                self._apply(envelope.sender, envelope.message)
            except Exception:
                log.exception(
                    "could not apply %s from worker %d", envelope.message, envelope.sender
                )

    def _apply(self, sender: int, message: Message) -> None:
        pool = self.pool
        match message:
            case Eject(name=name, url=url, seconds=seconds):
                pool.eject(name, url, seconds)
            case Probe(name=name, url=url, host=host, port=port, ok=ok):
                pool.record_probe(name, url, ok, target=Upstream(name=name, host=host, port=port))
            case Observe(instance=instance, came_back=came_back):
                pool.observe(instance, came_back=came_back)
            case Heard(name=name):
                pool.heard(name)
            case Remove(name=name):
                pool.remove(name)
            case Hello():
                self._send(Sync(members=pool.export_state()), to=sender)
            case Sync(members=members):
                pool.import_state(members)
            case MetricsAsk(ask=ask):
                self._send(MetricsReply(ask=ask, values=self.metrics.snapshot()), to=sender)
            case MetricsReply(ask=ask, values=values):
                gathering = self._pending.get(ask)
                if gathering is not None:
                    gathering.found.append(values)
                    if len(gathering.found) >= gathering.expected:
                        gathering.done.set()


class _Gathering:
    """The answers to one `MetricsAsk`."""

    __slots__ = ("done", "expected", "found")

    def __init__(self) -> None:
        self.expected = 0
        self.found: list[Snapshot] = []
        self.done = asyncio.Event()
