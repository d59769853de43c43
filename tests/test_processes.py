"""Process lifecycle of the services: a granian worker never outlives its master, and `aygolog
api` takes its worker count and backpressure from flags."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aygolog.embedded import EmbeddedRedis
from support import ServiceProcess, children, wait_until

pytestmark = pytest.mark.timeout(120)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def api(redis_server: EmbeddedRedis, prefix: str) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        "api",
        env={
            "AYGOLOG_REDIS_URL": redis_server.url,
            "AYGOLOG_REDIS_PREFIX": prefix,
            "AYGOLOG_INSTANCE_NAME": "api-lifeline",
        },
        args=("--workers", "2", "--backpressure", "64"),
    )
    try:
        yield service.start(timeout=60)
    finally:
        service.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_dies_with_its_killed_master_and_frees_the_port(api: ServiceProcess) -> None:
    assert api.process is not None
    master = api.process.pid
    # Both workers have built the app (and so set up their lifeline): each says it is ready. A
    # worker still loading when its master dies ends as soon as it gets there instead.
    assert wait_until(lambda: api.output().count("Log API api-lifeline ready") >= 2, 60), (
        api.output()
    )
    workers = children(master)
    assert len(workers) == 2, workers
    try:
        # A live stream is open: without the drain it would hold a graceful stop open.
        with httpx.Client(timeout=5) as client, client.stream("GET", api.url + "/api/logs/stream"):
            os.kill(master, signal.SIGKILL)  # only the master, as a crash or the OOM killer would
            api.process.wait()
            killed = time.monotonic()
            assert wait_until(lambda: not any(alive(w) for w in workers), 5), [
                w for w in workers if alive(w)
            ]
            gone = time.monotonic() - killed
            print(f"workers gone {gone:.2f} s after the master was killed")
    finally:
        for worker in workers:  # leave nothing behind when the test fails
            if alive(worker):
                os.kill(worker, signal.SIGKILL)
    assert gone < 2.0, f"the workers took {gone:.2f} s to die"
    assert wait_until(lambda: port_free(api.port), 2)


def test_api_flags_are_checked() -> None:
    import subprocess
    import sys

    for flag, value in (("--workers", "0"), ("--backpressure", "0")):
        result = subprocess.run(
            [sys.executable, "-m", "aygolog", "api", flag, value],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("aygolog api: "), result.stderr
        assert "greater than or equal to 1" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_worker_whose_master_died_while_it_was_loading_ends_at_once() -> None:
    """The master died before the worker built its app (and could ask to be told): the worker
    sees that its parent is not the one that started it, and ends instead of serving."""
    import subprocess
    import sys

    code = (
        "import time; from aygolog._lifeline import die_with_parent\n"
        "die_with_parent(expected_parent=-1)\n"
        "time.sleep(30); print('still here')"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert time.monotonic() - started < 20  # the interpreter's start-up, then at once
    assert "still here" not in result.stdout
    assert result.returncode in (-signal.SIGUSR1, -signal.SIGTERM, -signal.SIGALRM, 70), result
