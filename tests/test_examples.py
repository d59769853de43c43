"""examples/sdk_quickstart.py and examples/logging_handler.py run against a live stack."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from aygolog.client import LogClient
from support import LiveStack

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).parent.parent / "examples"


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
