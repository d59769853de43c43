"""A worker process dies with the process that started it.

granian runs each Log API worker as a child of its master. When the master is killed with
SIGKILL it cannot stop its workers, and a worker left behind (re-parented to PID 1) would keep
serving and heartbeating under the instance's name, holding the port that a restarted instance
then binds beside it (SO_REUSEPORT). `die_with_parent()`, called in the worker, prevents that:

- on Linux the kernel sends the worker SIGUSR1 the moment its parent dies (`PR_SET_PDEATHSIG`):
  the Log API's "drain" (deregister and end live streams, which would otherwise hold a graceful
  stop open), or, before the app has its handler, the signal's default action (the end);
- a daemon thread notices that `os.getppid()` changed (everywhere; within `poll` seconds), arms
  a kernel timer (SIGALRM, whose default action ends the process: this needs no Python code to
  run, so it holds even when the interpreter is stuck in its own shutdown, where daemon threads
  are frozen), then sends SIGUSR1 and SIGTERM (the graceful stop), and if the process still runs
  `grace` seconds later ends it with `os._exit`.

The kernel's signal is not SIGTERM: a graceful stop begun by it could freeze the watching thread
(interpreter shutdown) before the thread arms the timer, and a stream left open would then hold
the worker alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Final

__all__ = ["die_with_parent", "term_with_parent"]

_PR_SET_PDEATHSIG: Final = 1
EXIT_ORPHANED: Final = 70
"""The exit code of a worker that outlived its parent's grace period."""


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send this process `sig` when its parent dies (Linux; else nothing)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def term_with_parent() -> None:  # pragma: no cover - runs in a child between fork and exec
    """A `preexec_fn`: the child gets SIGTERM when the process that started it dies."""
    set_parent_death_signal(signal.SIGTERM)


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
    set_parent_death_signal(signal.SIGUSR1)
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
    with contextlib.suppress(OSError, ValueError, AttributeError):
        signal.setitimer(signal.ITIMER_REAL, grace + 0.5)  # SIGALRM: the end, even if frozen
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        with contextlib.suppress(OSError):
            os.kill(me, sig)
    time.sleep(grace)
    os._exit(EXIT_ORPHANED)
