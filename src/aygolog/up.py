"""`aygolog up`: the whole system on one machine, supervised.

Starts a Redis (the configured URL; else a private `redis-server`/`valkey-server`, see
`aygolog.embedded`), the load balancer, N Log API instances registered with it through a
registration token made for this run, and the web page. Each child's output is prefixed with its
name (coloured on a terminal). A child that exits unexpectedly is restarted with backoff while the
others keep running. Ctrl-C or SIGTERM stops everything: SIGTERM to each child, SIGKILL to any
still running after the grace period, then the private Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import secrets
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import httpx

from aygolog.embedded import EmbeddedRedis, free_port

__all__ = ["Child", "UpOptions", "run_up"]

_COLOURS = ("36", "32", "33", "35", "34", "96", "92", "93", "95", "94")
_RESET = "\033[0m"


@dataclass
class UpOptions:
    """What `aygolog up` starts, and where."""

    instances: int = 3
    host: str = "127.0.0.1"
    lb_port: int = 8080
    ui_port: int = 8000
    ui: bool = True
    redis_url: str | None = None
    grace_seconds: float = 4.0
    ready_timeout: float = 60.0


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    colour: str = ""
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    stopping: bool = False
    pump: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Starts children, prefixes their output, restarts them when they crash."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.children: list[Child] = []
        self.out = out
        self.colour = out.isatty() and os.environ.get("NO_COLOR") is None
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._width = 2

    def say(self, name: str, line: str, colour: str = "1") -> None:
        """Print one line with a (coloured) name prefix."""
        tag = f"{name:<{self._width}} |"
        if self.colour:
            tag = f"\033[{colour}m{tag}{_RESET}"
        self.out.write(f"{tag} {line}\n")
        self.out.flush()

    async def start(self, child: Child) -> None:
        """Start `child` and keep it running until `stop()`."""
        child.colour = _COLOURS[len(self.children) % len(_COLOURS)]
        self.children.append(child)
        self._width = max(len(c.name) for c in [*self.children, Child("up", (), {})])
        await self._spawn(child)
        self._watchers.append(asyncio.create_task(self._watch(child)))

    async def _spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            env={**os.environ, **child.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        child.pump = asyncio.create_task(self._pump(child, child.process))

    async def _pump(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            self.say(child.name, raw.decode(errors="replace").rstrip(), child.colour)

    async def _watch(self, child: Child) -> None:
        backoff = 0.5
        while True:
            assert child.process is not None
            started = time.monotonic()
            code = await child.process.wait()
            if child.pump is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(child.pump, 1.0)
            if child.stopping or self._stopping:
                return
            if time.monotonic() - started > 30:
                backoff = 0.5  # it ran fine for a while: start the backoff over
            child.restarts += 1
            self.say("up", f"{child.name} exited with code {code}; restarting in {backoff:g} s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            if self.stopping():  # stop() may have begun during the sleep
                return
            await self._spawn(child)

    def stopping(self) -> bool:
        """Whether `stop()` has begun."""
        return self._stopping

    async def stop(self, grace: float) -> None:
        """SIGTERM every child, SIGKILL those still running after `grace` seconds."""
        self._stopping = True
        for child in self.children:
            child.stopping = True
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            if child.process is None:
                continue
            try:
                await asyncio.wait_for(child.process.wait(), max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                self.say("up", f"{child.name} did not stop in {grace:g} s; killing it")
                _signal(child, signal.SIGKILL)
                await child.process.wait()
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)


def _signal(child: Child, sig: signal.Signals) -> None:
    if child.process is not None and child.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, sig)


async def _wait_ready(lb_url: str, instances: int, within: float) -> bool:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                health = await client.get(lb_url + "/health")
                services = await client.get(lb_url + "/api/registration/services")
                if health.status_code == 200 and services.status_code == 200:
                    healthy = [s for s in services.json() if s.get("status") == "healthy"]
                    if len(healthy) >= instances:
                        return True
            await asyncio.sleep(0.2)
    return False


async def run_up(options: UpOptions, out: TextIO = sys.stdout) -> int:
    """Run the whole system until SIGINT/SIGTERM; returns the exit code."""
    supervisor = Supervisor(out)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    redis: EmbeddedRedis | None = None
    redis_url = options.redis_url
    if redis_url is None:
        redis = EmbeddedRedis()
        await redis.astart()
        redis_url = redis.url
        supervisor.say("up", f"started a private Redis-compatible server at {redis_url}")
    token = secrets.token_urlsafe(24)
    lb_url = f"http://{options.host}:{options.lb_port}"
    python = sys.executable
    common = {
        "AYGOLOG_REDIS_URL": redis_url,
        "AYGOLOG_REGISTRATION_TOKEN": token,
        "PYTHONUNBUFFERED": "1",
    }
    try:
        await supervisor.start(
            Child("lb", [python, "-m", "aygolog", "lb", "--host", options.host,
                         "--port", str(options.lb_port)], common)
        )  # fmt: skip
        for i in range(1, options.instances + 1):
            port = free_port(options.host)
            env = {**common, "AYGOLOG_INSTANCE_NAME": f"api-{i}", "AYGOLOG_LB_URL": lb_url}
            await supervisor.start(
                Child(f"api-{i}", [python, "-m", "aygolog", "api", "--host", options.host,
                                   "--port", str(port)], env)
            )  # fmt: skip
        ui_url = f"http://{options.host}:{options.ui_port}"
        if options.ui and importlib.util.find_spec("aygolog.ui") is not None:
            await supervisor.start(
                Child("ui", [python, "-m", "aygolog", "ui", "--host", options.host,
                             "--port", str(options.ui_port), "--lb-url", lb_url], common)
            )  # fmt: skip
        else:
            ui_url = "(web page not started)"
        started = time.monotonic()
        ready = asyncio.create_task(_wait_ready(lb_url, options.instances, options.ready_timeout))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and ready.result():
            supervisor.say(
                "up",
                f"aygolog is up in {time.monotonic() - started:.1f} s: load balancer {lb_url}, "
                f"web page {ui_url}, {options.instances} Log API instances. Ctrl-C stops it.",
            )
        elif ready.done():
            supervisor.say("up", "not healthy in time; still trying (Ctrl-C stops)")
        await waiter
        ready.cancel()
        supervisor.say("up", "stopping")
        return 0
    finally:
        await supervisor.stop(options.grace_seconds)
        if redis is not None:
            await redis.astop()
        supervisor.say("up", "stopped")
