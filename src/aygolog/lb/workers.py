"""`aygolog lb --workers N`: N load balancer processes on one port, and their supervisor.

The supervisor (the `aygolog lb` process) checks that the port is free, keeps it reserved (a
socket bound with SO_REUSEPORT that does not listen, so port 0 becomes one port for all), makes
a private directory for the workers' bus (`aygolog.lb.bus`) and starts N workers. Each worker is
a whole load balancer (`aygolog.lb.app.run_load_balancer`): data plane, control plane, its own
pool following the Redis registry, listening on the same port with SO_REUSEPORT, so the kernel
spreads new connections over them.

- A worker that dies is started again (after 0.5 s, doubling up to 10 s while it keeps dying
  within 30 s of its start); the new one asks the others for their ejections and health
  verdicts.
- SIGTERM or SIGINT to the supervisor: every worker stops accepting, lets in-flight requests
  finish (at most `grace` seconds) and exits; then the supervisor removes the bus and exits 0.
  Workers still running `grace` + 2 s later are killed.
- Workers end with the supervisor, even when it is killed with SIGKILL (`aygolog._lifeline`:
  the kernel's SIGUSR1, which a worker takes as SIGTERM, and a watching thread).

Shared between the workers (the rest is each worker's own):

- The registry snapshot: each worker follows Redis itself (events + the 1 s poll), as one
  process did, so each keeps routing from its own snapshot when Redis is down. A registration,
  heartbeat or deregistration answered by one worker is also sent to the others over the bus
  at once (a heartbeat while Redis is down reaches every worker this way).
- Active health checks: each instance is probed by one worker (CRC-32 of its name modulo N);
  the result goes to every worker, so all keep the same verdict and each instance gets one
  probe per interval, as with one process.
- Passive ejection: the worker that ejects an instance tells the others, which eject it for as
  long (within their max-ejected cap) at once: well within a heartbeat. The failure streaks
  that lead to an ejection are counted per worker.
- `/metrics`: the worker answering asks the others for their values (at most 0.5 s) and sums
  counters and histograms; gauges of per-worker things (connections, in-flight) are summed,
  gauges of the shared view (healthy instances, panic) are the answering worker's.
  `aygolog_lb_workers_reporting` says how many workers the answer covers.

The bus is UNIX datagrams in a directory only the user can read (not Redis), so it works while
Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Final

from aygolog.lb.bus import WorkerInfo
from aygolog.settings import LoadBalancerSettings

__all__ = ["WORKER_VARIABLE", "serve_workers", "worker_main"]

log = logging.getLogger("aygolog.lb.workers")

WORKER_VARIABLE: Final = "_AYGOLOG_LB_WORKER"
"""Set by the supervisor for each worker: `index,count,bus directory,supervisor PID`."""
_GRACE: Final = 4.0
_BACKOFF_FIRST: Final = 0.5
_BACKOFF_MAX: Final = 10.0
_RAN_FINE: Final = 30.0


class PortInUse(OSError):
    """The port is taken by another process."""


def reserve_port(host: str, port: int) -> socket.socket:
    """Check that (host, port) is free and keep it: a SO_REUSEPORT socket bound there that
    does not listen (the workers' listeners join it). Port 0 picks a free port.

    Raises:
        PortInUse: another process listens there (even one with SO_REUSEPORT: a second load
            balancer must not silently share the port).
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    if port != 0:
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
        except OSError as exc:
            raise PortInUse(exc.errno, f"{host}:{port} is in use ({exc.strerror})") from None
        finally:
            probe.close()
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserved.bind(address)
    except OSError as exc:
        reserved.close()
        raise PortInUse(exc.errno, f"{host}:{port} is in use ({exc.strerror})") from None
    return reserved


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = _BACKOFF_FIRST
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Starts the workers, restarts one that dies, stops them all gracefully.

    Args:
        settings: the load balancer's settings (`workers`, where to listen).
        port: the port the workers listen on (already reserved).
        bus_dir: the directory of the workers' bus sockets.
        grace: seconds in-flight requests get when stopping.
    """

    def __init__(
        self, settings: LoadBalancerSettings, *, port: int, bus_dir: str, grace: float = _GRACE
    ) -> None:
        self.settings = settings
        self.port = port
        self.bus_dir = bus_dir
        self.grace = grace
        self.workers = [_Worker(i) for i in range(settings.workers)]
        self.stopping = False

    async def run(self, stop: asyncio.Event) -> None:
        """Start every worker, keep them running until `stop` is set, then stop them."""
        try:
            for worker in self.workers:
                await self._spawn(worker)
                worker.watcher = asyncio.create_task(self._watch(worker))
            log.info(
                "load balancer supervisor (pid %d): %d workers on port %d",
                os.getpid(),
                len(self.workers),
                self.port,
            )
            await stop.wait()
        finally:
            await self.stop()

    def is_stopping(self) -> bool:
        """Whether `stop()` has begun."""
        return self.stopping

    def pids(self) -> list[int]:
        """The PIDs of the running workers."""
        return [
            w.process.pid
            for w in self.workers
            if w.process is not None and w.process.returncode is None
        ]

    async def _spawn(self, worker: _Worker) -> None:
        env = {
            **os.environ,
            "AYGOLOG_PORT": str(self.port),
            WORKER_VARIABLE: f"{worker.index},{len(self.workers)},{self.bus_dir},{os.getpid()}",
        }
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from aygolog.lb.workers import worker_main; worker_main()",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        worker.started = time.monotonic()
        if self.stopping:  # stop() began while this one was starting: it stops too
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)

    async def _watch(self, worker: _Worker) -> None:
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self.stopping:
                return
            if time.monotonic() - worker.started > _RAN_FINE:
                worker.backoff = _BACKOFF_FIRST
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with {code}"
            log.warning(
                "worker %d (pid %d) %s; starting it again in %g s",
                worker.index,
                worker.process.pid,
                how,
                worker.backoff,
            )
            await asyncio.sleep(worker.backoff)
            worker.backoff = min(worker.backoff * 2, _BACKOFF_MAX)
            if self.is_stopping():  # stop() may have begun during the sleep
                return
            await asyncio.shield(self._spawn(worker))
            worker.restarts += 1

    async def stop(self) -> None:
        """SIGTERM to every worker; they finish in-flight requests within the grace and exit
        (SIGKILL to any still running `grace` + 2 s later)."""
        if self.stopping:
            return
        self.stopping = True
        watchers = [w.watcher for w in self.workers if w.watcher is not None]
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        running = [
            w.process
            for w in self.workers
            if w.process is not None and w.process.returncode is None
        ]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not running:
            return
        _, late = await asyncio.wait(
            [asyncio.ensure_future(p.wait()) for p in running], timeout=self.grace + 2.0
        )
        for process in running:
            if process.returncode is None:
                log.warning("worker pid %d did not stop in time; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if late:
            await asyncio.gather(*late, return_exceptions=True)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def serve_workers(settings: LoadBalancerSettings, *, grace: float = _GRACE) -> int:
    """Run `settings.workers` load balancer workers until SIGTERM/SIGINT; returns the exit code.

    Raises:
        PortInUse: the port is taken.
    """
    from aygolog.lb.app import _configure_logging

    _configure_logging()
    reserved = reserve_port(settings.host, settings.port)
    port = int(reserved.getsockname()[1])
    bus_dir = tempfile.mkdtemp(prefix="aygolog-lb-")  # 0700: only this user reaches the bus
    try:
        return asyncio.run(_supervise(settings, port=port, bus_dir=bus_dir, grace=grace))
    finally:
        reserved.close()
        shutil.rmtree(bus_dir, ignore_errors=True)


async def _supervise(
    settings: LoadBalancerSettings, *, port: int, bus_dir: str, grace: float
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Supervisor(settings, port=port, bus_dir=bus_dir, grace=grace).run(stop)
    log.info("load balancer stopped")
    return 0


def worker_info(value: str) -> WorkerInfo:
    """Parse `WORKER_VARIABLE`."""
    index, count, bus_dir, supervisor = value.split(",", 3)
    return WorkerInfo(
        index=int(index), count=int(count), bus_dir=bus_dir, supervisor=int(supervisor)
    )


def worker_main() -> None:  # pragma: no cover - runs in the worker process
    """A worker's entry point: the load balancer, as the supervisor's worker."""
    from aygolog._lifeline import die_with_parent
    from aygolog.lb.app import serve_load_balancer

    worker = worker_info(os.environ.pop(WORKER_VARIABLE))
    if die_with_parent(worker.supervisor, grace=_GRACE + 1.0) is None:
        return
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s[w{worker.index}]: %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        serve_load_balancer(LoadBalancerSettings(), worker=worker)
