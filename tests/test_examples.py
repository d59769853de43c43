"""Every example in examples/ runs against a live stack (the compose example, which needs only
Redis, in test_example_compose.py); a new example without a test fails `test_every_example_...`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from aygolog.client import LogClient
from support import LiveStack

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).parent.parent / "examples"
TESTS = Path(__file__).parent

# Each example and the test that runs it ("file.py::test" when in another test file).
TESTED = {
    "sdk_quickstart.py": "test_sdk_quickstart",
    "logging_handler.py": "test_logging_handler_example",
    "live_tail.py": "test_live_tail_example",
    "client_side_balancing.py": "test_client_side_balancing_example",
    "compose_your_own_app.py": "test_example_compose.py::test_compose_your_own_app",
}


def test_every_example_has_a_test() -> None:
    examples = sorted(p.name for p in EXAMPLES.glob("*.py"))
    untested = sorted(set(examples) - set(TESTED))
    assert not untested, f"examples without a test (add one and list it in TESTED): {untested}"
    assert sorted(TESTED) == examples, "TESTED names an example that no longer exists"
    for example, test in TESTED.items():
        module, _, name = test.rpartition("::")
        source = (TESTS / (module or Path(__file__).name)).read_text()
        assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{test} not found"
        assert example in source, f"{test} does not run {example}"


def test_every_example_says_how_to_run_it() -> None:
    for path in EXAMPLES.glob("*.py"):
        doc = path.read_text().split('"""')[1]
        assert f"python examples/{path.name}" in doc, path.name


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_sdk_quickstart(stack: LiveStack) -> None:
    service = f"qs-{uuid.uuid4().hex[:8]}"
    out = run("sdk_quickstart.py", stack.url, "--service", service).stdout
    assert "user signed in" in out
    assert "batch: 201 entries in 1 request(s)" in out
    assert "errors in the last 5 minutes: ['payment provider timeout']" in out
    assert "the 2000 EUR order: ['order 200 paid']" in out
    assert "orders of 1990 EUR or more: ['order 200 paid', 'order 199 paid']" in out
    assert "per level: {'error': 1, 'info': 201}" in out
    assert f"entries of {service}: 202" in out
    assert "live: warning disk almost full {'percent': 91}" in out
    assert "refused: ['message: must not be empty']" in out
    assert "async query: ['hello from asyncio']" in out
    assert f"stats: 204 entries of {service} stored" in out


def test_logging_handler_example(stack: LiveStack, tmp_path: Path) -> None:
    service = f"lh-{uuid.uuid4().hex[:8]}"
    result = run("logging_handler.py", stack.url, "--service", service, "--spool", str(tmp_path))
    out = result.stdout
    assert "handler: sent 253, dropped 0, undelivered 0" in out
    assert "stored: warning [shop.checkout] slow payment provider" in out
    assert "stored: error [shop.checkout] could not read the basket KeyError: 'missing'" in out
    with LogClient(stack.url) as client:
        entries = list(client.iter_logs(service=service))
    assert len(entries) == 253
    warning = next(e for e in entries if e.message == "slow payment provider")
    assert warning.attributes == {
        "logger": "shop.checkout", "provider": "acme", "ms": 1840, "retry": True,
    }  # fmt: skip
    assert not list(tmp_path.glob("*.batch"))  # nothing had to be spooled


def test_live_tail_example(stack: LiveStack) -> None:
    service = f"lt-{uuid.uuid4().hex[:8]}"
    out = run("live_tail.py", "--url", stack.url, "--count", "5", "--service", service,
              "--produce").stdout  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == f"following {stack.url} for 5 entries (Ctrl-C stops)"
    entries = [line for line in lines if "demo entry" in line]
    assert [e.split(" demo entry ")[1] for e in entries] == [
        f"{n} {{'n': {n}}}" for n in range(1, 6)
    ]
    assert entries[1].split()[1:3] == ["warning", service]
    assert re.fullmatch(r"done; resume later after id \d+-\d+", lines[-1])


def test_client_side_balancing_example(stack: LiveStack) -> None:
    service = f"csb-{uuid.uuid4().hex[:8]}"
    out = run("client_side_balancing.py", "--url", stack.url, "--count", "9",
              "--service", service).stdout  # fmt: skip
    assert "3 instance(s) served the 9 logs (api-0: 3, api-1: 3, api-2: 3)" in out
    assert "requests the load balancer proxied meanwhile: 0" in out
    batches = re.findall(r"^batch of (\d+) stored by (api-\d)$", out, re.MULTILINE)
    assert sorted(int(n) for n, _ in batches) == [500, 1000, 1000]
    assert len({name for _, name in batches}) == 3
    with LogClient(stack.url) as client:
        stored = list(client.iter_logs(service=service, limit=1000))
    assert len(stored) == 9 + 2500
    assert {e.instance for e in stored} == {"api-0", "api-1", "api-2"}
