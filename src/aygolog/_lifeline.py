"""A worker process dies with the process that started it.

granian runs each Log API worker as a child of its master. When the master is killed with
SIGKILL it cannot stop its workers, and a worker left behind (re-parented to PID 1) would keep
serving and heartbeating under the instance's name, holding the port that a restarted instance
then binds beside it (SO_REUSEPORT). `die_with_parent()`, called in the worker, prevents that:

- on Linux the kernel sends the worker SIGTERM the moment its parent dies (`PR_SET_PDEATHSIG`),
  so the server starts its graceful stop at once;
- everywhere, a daemon thread notices that `os.getppid()` changed (the portable fallback), sends
  the worker SIGUSR1 (the Log API's "drain": deregister and end live streams, which would
  otherwise hold the graceful stop open) and SIGTERM, and if the process still runs `grace`
  seconds later ends it with `os._exit`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Final

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG: Final = 1
EXIT_ORPHANED: Final = 70
"""The exit code of a worker that outlived its parent's grace period."""


def die_with_parent(
    expected_parent: int | None = None, *, grace: float = 1.0, poll: float = 0.1
) -> threading.Thread | None:
    """Make this process end when its parent dies (see the module docstring).

    Args:
        expected_parent: the parent's PID as the parent knew it; when this process already has
            another parent (it died before this call), this process ends at once. When None,
            the current parent is watched.
        grace: seconds from noticing the parent's death to `os._exit`.
        poll: seconds between checks of `os.getppid()`.

    Returns:
        The watching thread, or None when the parent is already gone (this process then exits).
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # Read after prctl: a parent that dies from here on is caught by the kernel or the thread.
    parent = os.getppid()
    if expected_parent is not None and parent != expected_parent:
        _orphaned(grace)  # it died before we could ask to be told
        return None
    watcher = threading.Thread(
        target=_watch, args=(parent, grace, poll), name="aygolog-lifeline", daemon=True
    )
    watcher.start()
    return watcher


def _watch(parent: int, grace: float, poll: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll)
    _orphaned(grace)


def _orphaned(grace: float) -> None:  # pragma: no cover - ends the process
    me = os.getpid()
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        with contextlib.suppress(OSError):
            os.kill(me, sig)
    time.sleep(grace)
    os._exit(EXIT_ORPHANED)
