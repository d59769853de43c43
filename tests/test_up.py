"""`aygolog up` as a user runs it: everything healthy within 60 s, prefixed output, a crashed
instance restarted (and reported) while the rest keeps serving, and Ctrl-C / SIGTERM / even a
SIGKILL of `up` leaving no process behind."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aygolog.embedded import free_port

pytestmark = pytest.mark.timeout(180)

HAS_UI = importlib.util.find_spec("aygolog.ui") is not None


class Up:
    """`python -m aygolog up ...` in its own session, its output collected line by line."""

    def __init__(self, *args: str) -> None:
        self.lb_port = free_port()
        self.ui_port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("AYGOLOG_REDIS_URL", "ConnectionStrings__Redis", "AYGOLOG_URL")
        }
        if "--data-dir" not in args:  # never the user's real data directory
            args = ("--ephemeral", *args)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aygolog", "up", "--lb-port", str(self.lb_port),
             "--ui-port", str(self.ui_port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.seen: dict[int, str] = {}
        """Every process of the tree ever observed: pid -> command line."""

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        """The first output line from `start` on that matches `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    if found := regex.search(line):
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    break
                self._changed.wait(min(left, 0.5))
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + self.output())

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def tree(self) -> dict[int, str]:
        """The live descendants of `up` (pid -> command line); remembered in `seen`."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                parents[int(stat.parent.name)] = int(fields[1])
        found: dict[int, str] = {}
        todo = [self.process.pid]
        while todo:
            parent = todo.pop()
            for pid, ppid in parents.items():
                if ppid == parent and pid not in found:
                    found[pid] = _cmdline(pid)
                    todo.append(pid)
        self.seen.update(found)
        return found

    def left_behind(self) -> list[str]:
        """Processes of the tree (or of `up`'s session) still running."""
        left = [f"{pid} {cmd}" for pid, cmd in self.seen.items() if _cmdline(pid) == cmd]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == self.process.pid:  # the session id
                    left.append(
                        f"{stat.parent.name} (session of up) {_cmdline(int(stat.parent.name))}"
                    )
        return left

    def stop(self, sig: signal.Signals) -> float:
        """Send `sig` to `up`; seconds until it exited."""
        started = time.monotonic()
        self.process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(15)
        return time.monotonic() - started

    def close(self) -> None:
        """Leave nothing behind, whatever happened in the test."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        for pid, cmd in self.seen.items():
            if _cmdline(pid) == cmd:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def running_up(*args: str) -> Iterator[Up]:
    up = Up(*args)
    try:
        yield up
    finally:
        up.close()


def healthy_names(lb_url: str) -> list[str]:
    services = httpx.get(lb_url + "/api/registration/services", timeout=2).json()
    return sorted(s["name"] for s in services if s["status"] == "healthy")


def wait_healthy(lb_url: str, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: list[str] | Exception = []
    while time.monotonic() < deadline:
        try:
            last = healthy_names(lb_url)
            if last == names:
                return
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"healthy instances: {last}, expected {names}")


def test_up_serves_restarts_a_crashed_instance_and_stops_on_ctrl_c() -> None:
    with running_up("--instances", "3", *(() if HAS_UI else ("--no-ui",))) as up:
        found = up.wait_for(r"^up +\| aygolog is up in ([\d.]+) s", timeout=60)
        assert float(found.group(1)) < 60
        assert httpx.get(up.lb_url + "/health", timeout=2).status_code == 200
        assert healthy_names(up.lb_url) == ["api-1", "api-2", "api-3"]
        if HAS_UI:
            page = httpx.get(f"http://127.0.0.1:{up.ui_port}/", timeout=10)
            assert page.status_code == 200
        # Each child's output is prefixed with its name.
        up.wait_for(r"^lb +\| ", timeout=1)
        for n in (1, 2, 3):
            up.wait_for(rf"^api-{n} +\| ", timeout=1)

        tree = up.tree()
        apis = {
            pid: cmd
            for pid, cmd in tree.items()
            if " -m aygolog api " in cmd and _parent(pid) == up.process.pid
        }
        assert len(apis) == 3, tree
        assert any("redis-server" in cmd or "valkey-server" in cmd for cmd in tree.values())
        victim = min(apis)
        mark = len(up.lines)
        os.kill(victim, signal.SIGKILL)  # a crash
        crashed = up.wait_for(
            r"^up +\| (api-\d) was killed by SIGKILL; restarting it in", timeout=10, start=mark
        )
        name = crashed.group(1)
        up.wait_for(rf"^up +\| {name} restarted \(pid \d+, restart 1\)", timeout=10, start=mark)
        # The others kept serving meanwhile, and the crashed one comes back.
        assert httpx.post(up.lb_url + "/api/log", json={"message": "still here"}).status_code == 201
        wait_healthy(up.lb_url, ["api-1", "api-2", "api-3"], timeout=30)
        assert _cmdline(victim) == ""
        up.tree()

        took = up.stop(signal.SIGINT)
        assert up.process.returncode == 0, up.output()
        assert took < 5.0, f"stopping took {took:.1f} s:\n{up.output()}"
        assert "did not stop in time" not in up.output()
        up.wait_for(r"^up +\| stopped$", timeout=2)
        assert up.left_behind() == []


def test_sigterm_stops_it_too() -> None:
    with running_up("--instances", "1", "--no-ui") as up:
        up.wait_for(r"aygolog is up in", timeout=60)
        assert healthy_names(up.lb_url) == ["api-1"]
        up.tree()
        took = up.stop(signal.SIGTERM)
        assert up.process.returncode == 0, up.output()
        assert took < 5.0, f"stopping took {took:.1f} s:\n{up.output()}"
        assert up.left_behind() == []


def test_even_a_killed_up_leaves_no_process_behind() -> None:
    with running_up("--instances", "1", "--no-ui") as up:
        up.wait_for(r"aygolog is up in", timeout=60)
        assert len(up.tree()) >= 3  # redis, lb, api (and granian's worker)
        up.process.kill()
        up.process.wait()
        deadline = time.monotonic() + 10
        while up.left_behind() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert up.left_behind() == []


def test_a_taken_port_is_a_user_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "aygolog", "up", "--lb-port", str(port), "--no-ui"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"aygolog up: port {port} (load balancer) is in use on 127.0.0.1;"
        " choose another with --lb-port"
    )


@pytest.mark.timeout(420)  # two `up`s, each up to 60 s to be healthy, and a refused third
def test_logs_survive_a_kill_9_of_every_process_and_the_data_dir_is_locked(
    tmp_path: Path,
) -> None:
    """Item 15.11's acceptance: write 1,000 logs, SIGKILL `up` and every process it started
    (Redis too) right after the last answer, start again on the same data directory: all there."""
    from aygolog.client import LogClient

    data = tmp_path / "data"
    service = f"durable-{os.getpid()}"
    with running_up("--instances", "1", "--no-ui", "--data-dir", str(data)) as up:
        up.wait_for(rf"^up +\| data directory {re.escape(str(data))} \(append-only file", 60)
        up.wait_for(r"aygolog is up in", timeout=60)
        # A second `up` on the same directory refuses, saying why; the first is unharmed.
        second = subprocess.run(
            [sys.executable, "-m", "aygolog", "up", "--no-ui", "--data-dir", str(data),
             "--lb-port", str(free_port())],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert f"the data directory {data} is in use by aygolog (pid {up.process.pid})" in (
            second.stderr
        )
        assert "Traceback" not in second.stderr
        with LogClient(up.lb_url, service=service) as client:
            for start in range(0, 1000, 50):
                client.log_many([f"log {n}" for n in range(start, start + 50)])
        tree = up.tree()
        assert any("redis-server" in c or "valkey-server" in c for c in tree.values()), tree
        for pid in [up.process.pid, *tree]:  # everything at once, Redis included
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        up.process.wait()
        deadline = time.monotonic() + 10
        while up.left_behind() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert up.left_behind() == []
    with running_up("--instances", "1", "--no-ui", "--data-dir", str(data)) as again:
        again.wait_for(r"aygolog is up in", timeout=60)
        with LogClient(again.lb_url) as client:
            stored = [e.message for e in client.iter_logs(service=service, limit=1000)]
    assert len(stored) == 1000
    assert set(stored) == {f"log {n}" for n in range(1000)}


def test_the_default_data_dir_is_the_users_data_dir() -> None:
    from aygolog.up import default_data_dir

    if sys.platform in ("darwin", "win32"):
        pytest.skip("the XDG rules are for Linux and other Unixes")
    home = {"HOME": "/home/ada"}
    assert default_data_dir(home) == Path("/home/ada/.local/share/aygolog")
    assert default_data_dir({**home, "XDG_DATA_HOME": "/data"}) == Path("/data/aygolog")
    assert default_data_dir({**home, "XDG_DATA_HOME": "relative"}) == Path(
        "/home/ada/.local/share/aygolog"
    )  # the XDG spec: a relative path is ignored
    assert default_data_dir({**home, "AYGOLOG_DATA_DIR": "~/logs"}) == Path.home() / "logs"


def test_data_dir_flags_are_for_the_private_redis_only() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aygolog", "up", "--no-ui", "--ephemeral"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "AYGOLOG_REDIS_URL": "redis://127.0.0.1:9/0"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "--data-dir and --ephemeral are for the private Redis" in result.stderr
    a_file = Path(__file__)
    unusable = subprocess.run(
        [sys.executable, "-m", "aygolog", "up", "--no-ui", "--data-dir", str(a_file),
         "--lb-port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unusable.returncode == 1
    assert unusable.stderr.startswith(f"aygolog up: cannot keep data in {a_file}: "), (
        unusable.stderr
    )
    assert "Traceback" not in unusable.stderr
    both = subprocess.run(
        [sys.executable, "-m", "aygolog", "up", "--ephemeral", "--data-dir", "/tmp/x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert both.returncode == 1
    assert "not allowed with argument" in both.stderr


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0
