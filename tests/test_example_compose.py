"""examples/compose_your_own_app.py runs and does what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aygolog.embedded import EmbeddedRedis, free_port

EXAMPLE = Path(__file__).parent.parent / "examples" / "compose_your_own_app.py"


def test_compose_your_own_app(redis_server: EmbeddedRedis) -> None:
    env = {**os.environ, "AYGOLOG_REDIS_URL": redis_server.url, "EXAMPLE_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--check"], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ana's events, newest first: ['export', 'login']" in result.stdout
