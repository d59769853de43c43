"""`aygolog up`: the whole system on one machine, supervised.

Starts a Redis (the configured URL; else a private `redis-server`/`valkey-server`, see
`aygolog.embedded`), the load balancer, N Log API instances registered with it through a
registration token made for this run, and the web page. Each child's output is prefixed with its
name (coloured on a terminal). A child that exits unexpectedly is restarted with backoff while the
others keep running. Ctrl-C or SIGTERM stops everything within 5 s: SIGTERM to the web page and
the instances (which deregister while the load balancer still answers), then to the load
balancer, SIGKILL to any child still running at the end of the grace period, then the private
Redis. On Linux every child also gets SIGTERM if `up` itself dies (PR_SET_PDEATHSIG), so not even
`kill -9` of `up` leaves a process behind.

The private Redis keeps its data in a data directory (`UpOptions.data_dir`; `aygolog up` defaults
to `default_data_dir()`) in an append-only file fsynced every second, so the logs are there after
Ctrl-C, a crash or a reboot. The directory is locked while its Redis runs: a second `up` on it
refuses to start. `data_dir=None` (`--ephemeral`) keeps nothing, as a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx

from aygolog._lifeline import term_with_parent
from aygolog.embedded import DataDirInUse, EmbeddedRedis, free_port

__all__ = ["Child", "UpOptions", "default_data_dir", "run_up"]

DATA_DIR_VARIABLE = "AYGOLOG_DATA_DIR"


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where `aygolog up` keeps its data: `$AYGOLOG_DATA_DIR`, else the user's data directory.

    That is `$XDG_DATA_HOME/aygolog` (default `~/.local/share/aygolog`) on Linux and other
    Unixes, `~/Library/Application Support/aygolog` on macOS, `%LOCALAPPDATA%\\aygolog` on
    Windows. A per-user directory rather than `./.aygolog`: the logs do not depend on the
    directory `up` was started from, and cleaning a checkout (`git clean -fdx`) keeps them.
    """
    env = os.environ if env is None else env
    if env.get(DATA_DIR_VARIABLE):
        return Path(env[DATA_DIR_VARIABLE]).expanduser()
    home = Path(env.get("HOME") or Path.home())
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "aygolog"
    if sys.platform == "win32":
        return Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local") / "aygolog"
    xdg = env.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "share"
    return base / "aygolog"


_COLOURS = ("36", "32", "33", "35", "34", "96", "92", "93", "95", "94")
_RESET = "\033[0m"
_LINE_LIMIT = 1 << 20
# A successful heartbeat every 2 s per instance is noise, not news.
_NOISE = re.compile(r'httpx .*HTTP Request: PUT \S+/heartbeat "HTTP/1\.1 200')


@dataclass
class UpOptions:
    """What `aygolog up` starts, and where."""

    instances: int = 3
    host: str = "127.0.0.1"
    lb_port: int = 8080
    ui_port: int = 8000
    ui: bool = True
    redis_url: str | None = None
    data_dir: Path | None = None
    """Where the private Redis keeps its data (in `redis/`); None: nowhere (ephemeral)."""
    grace_seconds: float = 4.0
    """The whole stop (before the private Redis) takes at most this long."""
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
    wave: int = 1
    """When it is stopped: the web page (0) first, so its live streams through the load
    balancer end; then the instances (1), which deregister while the load balancer still
    answers; then the load balancer (2)."""
    pump: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Starts children, prefixes their output, restarts them when they crash."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.children: list[Child] = []
        self.out = out
        self.colour = out.isatty() and os.environ.get("NO_COLOR") is None
        self._watchers: list[asyncio.Task[None]] = []
        self._spawns: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._width = 5  # "api-1"; grows with longer names

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
        self._width = max(self._width, len(child.name))
        await self._spawn(child)
        self._watchers.append(asyncio.create_task(self._watch(child)))

    async def _spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            env={**os.environ, **child.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C is not theirs: `up` stops them in order
            preexec_fn=term_with_parent if sys.platform == "linux" else None,
            limit=_LINE_LIMIT,
        )
        child.pump = asyncio.create_task(self._pump(child, child.process))

    async def _pump(self, child: Child, process: asyncio.subprocess.Process) -> None:
        stream = process.stdout
        assert stream is not None
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: show it in pieces
                raw = await stream.read(_LINE_LIMIT)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            if not _NOISE.search(line):
                self.say(child.name, line, child.colour)

    async def _watch(self, child: Child) -> None:
        backoff = 0.5
        while True:
            assert child.process is not None
            started = time.monotonic()
            code = await _exited(child.process)
            if child.stopping or self._stopping:
                return
            # What it started in its group (granian's worker) may outlive it, holding the port
            # and our pipe: take it down before starting a new one.
            _kill_group(child.process.pid)
            if child.pump is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(child.pump, 1.0)
            if time.monotonic() - started > 30:
                backoff = 0.5  # it ran fine for a while: start the backoff over
            child.restarts += 1
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
            self.say("up", f"{child.name} {how}; restarting it in {backoff:g} s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            if self.stopping():  # stop() may have begun during the sleep
                return
            # Shielded: a stop() that cancels this watcher still gets the new process to stop.
            spawn = asyncio.ensure_future(self._spawn(child))
            self._spawns.add(spawn)
            spawn.add_done_callback(self._spawns.discard)
            await asyncio.shield(spawn)
            assert child.process is not None
            self.say(
                "up", f"{child.name} restarted (pid {child.process.pid}, restart {child.restarts})"
            )

    def stopping(self) -> bool:
        """Whether `stop()` has begun."""
        return self._stopping

    async def stop(self, grace: float) -> None:
        """Stop every child within `grace` seconds: the instances and the web page first (so they
        deregister while the load balancer still answers), then the load balancer; SIGKILL to
        whatever still runs at the deadline."""
        self._stopping = True
        now = time.monotonic()
        deadline = now + grace
        for watcher in self._watchers:  # no restarts from here on
            watcher.cancel()
        await asyncio.gather(*self._watchers, *self._spawns, return_exceptions=True)
        # The web page gets a second, the instances most of the rest, the load balancer at
        # least the last second.
        ends = {0: now + min(1.0, grace / 4), 1: now + max(grace - 1.0, grace / 2), 2: deadline}
        for wave, until in sorted(ends.items()):
            await _terminate([c for c in self.children if c.wave == wave], until=until)
        left = [c for c in self.children if c.process is not None and c.process.returncode is None]
        for child in left:
            self.say("up", f"{child.name} did not stop in time; killing it")
            _signal(child, signal.SIGKILL)
        for child in left:
            assert child.process is not None
            await _exited(child.process)
        pumps = [c.pump for c in self.children if c.pump is not None and not c.pump.done()]
        if pumps:  # let them read to the end, so every pipe is closed before the loop is
            await asyncio.wait(pumps, timeout=0.5)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _terminate(children: list[Child], *, until: float) -> None:
    """SIGTERM to `children`; wait until they all exited or the time `until` came."""
    for child in children:
        child.stopping = True
        _signal(child, signal.SIGTERM)
    waits = [
        asyncio.ensure_future(_exited(c.process))
        for c in children
        if c.process is not None and c.process.returncode is None
    ]
    if not waits:
        return
    _, pending = await asyncio.wait(waits, timeout=max(0.05, until - time.monotonic()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _exited(process: asyncio.subprocess.Process) -> int:
    """The exit code once the process has exited.

    Not `process.wait()`: on Python 3.11 that also waits until its output pipe is closed, which
    a grandchild that outlived it (granian's worker) may hold open forever.
    """
    while process.returncode is None:  # noqa: ASYNC110 - asyncio offers no exit-only event
        await asyncio.sleep(0.05)
    return process.returncode


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _signal(child: Child, sig: signal.Signals) -> None:
    if child.process is not None and child.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, sig)


async def _healthy(
    client: httpx.AsyncClient, lb_url: str, instances: int, ui_url: str | None
) -> bool:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        if (await client.get(lb_url + "/health")).status_code != 200:
            return False
        services = await client.get(lb_url + "/api/registration/services")
        if services.status_code != 200:
            return False
        healthy = [s for s in services.json() if s.get("status") == "healthy"]
        if len(healthy) < instances:
            return False
        return ui_url is None or (await client.get(ui_url + "/")).status_code == 200
    return False


async def _announce_when_ready(
    supervisor: Supervisor,
    options: UpOptions,
    lb_url: str,
    ui_url: str | None,
    started: float,
) -> None:
    """Say "aygolog is up" once the LB, every instance and the web page answer."""
    warn_at = time.monotonic() + options.ready_timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while not await _healthy(client, lb_url, options.instances, ui_url):
            if warn_at and time.monotonic() > warn_at:
                supervisor.say(
                    "up",
                    f"not healthy after {options.ready_timeout:g} s; still waiting (Ctrl-C stops)",
                )
                warn_at = 0.0
            await asyncio.sleep(0.2)
    page = f", web page {ui_url}" if ui_url else ""
    supervisor.say(
        "up",
        f"aygolog is up in {time.monotonic() - started:.1f} s: load balancer {lb_url} with "
        f"{options.instances} Log API instance(s){page}. Ctrl-C stops it.",
    )
    flag = "" if lb_url == "http://127.0.0.1:8080" else f" --url {lb_url}"
    supervisor.say(
        "up", f"try: aygolog send 'hello'{flag}; aygolog query{flag}; aygolog tail{flag}"
    )


def _unusable(directory: Path) -> str | None:
    """Why `directory` cannot hold the data (after creating it if need be), or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not os.access(directory, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As the servers do: a closed connection's TIME-WAIT does not make the port taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


async def run_up(options: UpOptions, out: TextIO = sys.stdout) -> int:
    """Run the whole system until SIGINT/SIGTERM; returns the exit code (1: a port is taken)."""
    started = time.monotonic()
    supervisor = Supervisor(out)
    with_ui = options.ui and importlib.util.find_spec("aygolog.ui") is not None
    ports = [("load balancer", "--lb-port", options.lb_port)]
    if with_ui:
        ports.append(("web page", "--ui-port", options.ui_port))
    for what, flag, port in ports:
        if _port_in_use(options.host, port):
            print(
                f"aygolog up: port {port} ({what}) is in use on {options.host}; "
                f"choose another with {flag}",
                file=sys.stderr,
            )
            return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    redis: EmbeddedRedis | None = None
    redis_url = options.redis_url
    if redis_url is None:
        if options.data_dir is not None and (problem := _unusable(options.data_dir / "redis")):
            print(
                f"aygolog up: cannot keep data in {options.data_dir}: {problem}; choose another"
                " with --data-dir (or --ephemeral)",
                file=sys.stderr,
            )
            return 1
        if options.data_dir is None:
            redis = EmbeddedRedis()
        else:
            redis = EmbeddedRedis(
                appendonly=True,
                appendfsync="everysec",
                data_dir=options.data_dir / "redis",
                startup_timeout=300.0,  # loading a big append-only file takes a while
            )
        try:
            await redis.astart()
        except DataDirInUse as exc:
            print(
                f"aygolog up: the data directory {options.data_dir} is in use by {exc.holder};"
                " stop that one first, or choose another with --data-dir (or --ephemeral)",
                file=sys.stderr,
            )
            return 1
        redis_url = redis.url
        supervisor.say("up", f"started a private Redis-compatible server at {redis_url}")
        if options.data_dir is None:
            supervisor.say("up", "ephemeral: no data is kept after it stops")
        else:
            supervisor.say(
                "up",
                f"data directory {options.data_dir} (append-only file, fsynced every second;"
                " --data-dir to choose another, --ephemeral to keep nothing)",
            )
    else:
        supervisor.say("up", "using the configured Redis")
    token = secrets.token_urlsafe(24)
    host = f"[{options.host}]" if ":" in options.host else options.host  # IPv6
    lb_url = f"http://{host}:{options.lb_port}"
    python = sys.executable
    common = {
        "AYGOLOG_REDIS_URL": redis_url,
        "AYGOLOG_REGISTRATION_TOKEN": token,
        "PYTHONUNBUFFERED": "1",
    }
    announce: asyncio.Task[None] | None = None
    try:
        await supervisor.start(
            Child("lb", [python, "-m", "aygolog", "lb", "--host", options.host,
                         "--port", str(options.lb_port)], common, wave=2)
        )  # fmt: skip
        for i in range(1, options.instances + 1):
            port = free_port(options.host)
            env = {**common, "AYGOLOG_INSTANCE_NAME": f"api-{i}", "AYGOLOG_LB_URL": lb_url}
            await supervisor.start(
                Child(f"api-{i}", [python, "-m", "aygolog", "api", "--host", options.host,
                                   "--port", str(port)], env)
            )  # fmt: skip
        ui_url: str | None = None
        if with_ui:
            ui_url = f"http://{host}:{options.ui_port}"
            await supervisor.start(
                Child("ui", [python, "-m", "aygolog", "ui", "--host", options.host,
                             "--port", str(options.ui_port), "--lb-url", lb_url], common, wave=0)
            )  # fmt: skip
        elif options.ui:
            supervisor.say("up", "the web page is not installed (the `ui` extra); not starting it")
        announce = asyncio.create_task(
            _announce_when_ready(supervisor, options, lb_url, ui_url, started)
        )
        await stop.wait()
        supervisor.say("up", "stopping")
        return 0
    finally:
        if announce is not None:
            announce.cancel()
            await asyncio.gather(announce, return_exceptions=True)
        await supervisor.stop(options.grace_seconds)
        if redis is not None:
            await redis.astop()
        supervisor.say("up", "stopped")
