"""Real processes for end-to-end tests: `aygolog api` / `aygolog lb` on loopback ports, and
`LiveStack` (Redis + LB + 3 instances; the `stack` fixture in conftest.py)."""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from aygolog.embedded import EmbeddedRedis, free_port


class ServiceProcess:
    """One `python -m aygolog <command>` child, started on a free port and waited for.

    Its output goes to a temporary file, quoted when it fails to start.
    """

    def __init__(
        self,
        command: str,
        *,
        env: Mapping[str, str],
        port: int | None = None,
        args: tuple[str, ...] = (),
        health_path: str = "/health",
    ) -> None:
        self.command = command
        self.port = port or free_port()
        self.env = {**os.environ, **env}
        self.args = args
        self.health_path = health_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept open for the child's life
            prefix=f"aygolog-{command}-", suffix=".log", delete=False
        )

    @property
    def url(self) -> str:
        """The base URL of the service."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where the child's output goes."""
        return Path(self._log.name)

    def start(self, timeout: float = 20.0) -> ServiceProcess:
        """Start the child and wait until its health endpoint answers 200."""
        return self.spawn().wait_ready(timeout)

    def spawn(self) -> ServiceProcess:
        """Start the child. Started from the main thread, on Linux it is told to stop when the
        test run ends, even by SIGKILL (from another thread it is not: it would be told when
        that thread ends)."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aygolog", self.command, "--host", "127.0.0.1",
             "--port", str(self.port), *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Dies with the test run even when pytest is killed (a timeout, Ctrl-C twice). Only
            # from the main thread: the kernel signals when the starting *thread* ends.
            preexec_fn=_die_with_parent
            if _PDEATHSIG and threading.current_thread() is threading.main_thread()
            else None,
        )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 20.0) -> ServiceProcess:
        """Wait until the started child's health endpoint answers 200."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited: {self.output()}")
            try:
                if httpx.get(self.url + self.health_path, timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.command} did not become healthy: {self.output()}")

    def output(self) -> str:
        """What the child printed so far (the end of it)."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the whole process group, then wait (SIGKILL after `timeout`)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL to the whole process group, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def close(self) -> None:
        """Stop the child and remove its log."""
        self.terminate()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


_PDEATHSIG = sys.platform == "linux"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def children(pid: int) -> list[int]:
    """The live (not zombie) child processes of `pid`, from /proc (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll `check` until it is true or `timeout` seconds passed; returns its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


class LiveStack:
    """Redis (append-only) + the LB and 3 instances (or, with `use_lb=False`, 1 instance).

    Redis is always started from the calling (main) thread: `EmbeddedRedis` ties the server's
    life to the thread that started it.
    """

    def __init__(self, data_dir: Path, *, use_lb: bool = True, prefix: str = "live") -> None:
        self.use_lb = use_lb
        self.prefix = prefix
        self.redis = EmbeddedRedis(appendonly=True, data_dir=data_dir)
        self.token = secrets.token_urlsafe(16)
        self.lb: ServiceProcess | None = None
        self.instances: list[ServiceProcess] = []

    @property
    def url(self) -> str:
        """Where clients send: the LB, or the only instance."""
        return self.lb.url if self.lb is not None else self.instances[0].url

    @property
    def front(self) -> ServiceProcess:
        """The process clients connect to."""
        return self.lb if self.lb is not None else self.instances[0]

    def start(self) -> LiveStack:
        self.redis.start()
        common = {"AYGOLOG_REDIS_URL": self.redis.url, "AYGOLOG_REDIS_PREFIX": self.prefix}
        if self.use_lb:
            self.lb = ServiceProcess(
                "lb", env={**common, "AYGOLOG_REGISTRATION_TOKEN": self.token}
            ).start()
            registration = {
                "AYGOLOG_LB_URL": self.lb.url,
                "AYGOLOG_REGISTRATION_TOKEN": self.token,
                "AYGOLOG_HEARTBEAT_INTERVAL": "0.5",
            }
            self.instances = [
                ServiceProcess(
                    "api", env={**common, **registration, "AYGOLOG_INSTANCE_NAME": f"api-{i}"}
                )
                for i in range(3)
            ]
        else:
            self.instances = [
                ServiceProcess("api", env={**common, "AYGOLOG_INSTANCE_NAME": "api-0"})
            ]
        self._start_instances(self.instances)
        return self

    def _start_instances(self, instances: list[ServiceProcess]) -> None:
        for process in instances:  # from this thread: see `ServiceProcess.spawn`
            process.spawn()
        with concurrent.futures.ThreadPoolExecutor(len(instances)) as pool:
            list(pool.map(lambda p: p.wait_ready(timeout=30), instances))
        self.wait_registered()

    def wait_registered(self, timeout: float = 20) -> None:
        """With an LB: wait until every instance is registered and healthy."""
        if self.lb is None:
            return
        url = self.lb.url + "/api/registration/services"

        def healthy() -> bool:
            try:
                services = httpx.get(url, timeout=1).json()
            except (httpx.HTTPError, ValueError):
                return False
            count = sum(s.get("status") == "healthy" for s in services)
            return bool(count >= len(self.instances))

        assert wait_until(healthy, timeout), "instances did not register with the LB"

    def restart_instance(self, index: int) -> None:
        """SIGKILL an instance (a crash) and start it again on the same port."""
        self.instances[index].kill()
        self.instances[index].start(timeout=30)
        self.wait_registered()

    def kill_front(self) -> None:
        self.front.kill()

    def start_front(self) -> None:
        self.front.start(timeout=30)
        self.wait_registered()

    def restart_redis(self) -> None:
        self.redis.stop()
        self.redis.start()

    def stop(self) -> None:
        """Everything down: the instances, the LB, Redis."""
        for process in self.instances:
            process.kill()
        if self.lb is not None:
            self.lb.kill()
        self.redis.stop()

    def start_again(self) -> None:
        self.redis.start()
        if self.lb is not None:
            self.lb.start(timeout=30)
        self._start_instances(self.instances)

    def close(self) -> None:
        for process in self.instances:
            process.close()
        if self.lb is not None:
            self.lb.close()
        self.redis.stop()
