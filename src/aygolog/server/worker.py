"""The Log API app as a granian worker builds it: `create_log_api()` plus a lifeline.

`aygolog api` serves `aygolog.server.worker:create_worker_app` with granian, so each worker ends
when its master dies, even by SIGKILL (see `aygolog._lifeline`).
"""

from __future__ import annotations

import os

from litestar import Litestar

from aygolog._lifeline import die_with_parent
from aygolog.server.app import create_log_api

__all__ = ["PARENT_VARIABLE", "create_worker_app"]

PARENT_VARIABLE = "AYGOLOG_WORKER_PARENT"
"""Set by `aygolog api` to its own PID before granian forks the workers."""


def create_worker_app() -> Litestar:
    """The Log API app, in a worker that dies with its parent (granian's master)."""
    parent = os.environ.get(PARENT_VARIABLE, "")
    die_with_parent(int(parent) if parent.isdigit() else None)
    return create_log_api()
