"""Real processes for end-to-end tests: `aygolog api` / `aygolog lb` on loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from aygolog.embedded import free_port


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
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aygolog", self.command, "--host", "127.0.0.1",
             "--port", str(self.port), *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
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
