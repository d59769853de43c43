"""Which finished requests count against an instance (passive health), as pure code.

After Envoy's `consecutive_gateway_failure`: a connection that could not be made, or a reset,
timeout, invalid response, 502 or 504, says the instance (or what is in front of it) is broken;
every answer it gives on purpose (2xx-4xx, 500, 503...) says it is up. `InstancePool` keeps the
streaks and ejects (see `aygolog.lb.pool`).
"""

from __future__ import annotations

import enum
from typing import Final

from aygolog.lb.upstream import UpstreamFailure

__all__ = ["Verdict", "classify"]


class Verdict(enum.Enum):
    """What one finished request says about the instance that served it."""

    CONNECT_FAILURE = "connect failure"
    """No connection could be made: the instance is down or unreachable. Ejects at once."""
    GATEWAY_FAILURE = "gateway failure"
    """Reset, timed out, an invalid answer, or 502/504: the instance (or what is in front of it)
    is broken. Ejects after `failures_to_eject` in a row."""
    ANSWERED = "answered"
    """An answer the instance gave on purpose (2xx-4xx, 500, 503...): clears the streak."""
    UNKNOWN = "unknown"
    """No answer and no failure (the client went away first, 499): says nothing."""


# StrEnum members equal their values, so a plain str from the proxy matches too.
_CONNECT_ERRORS: Final = frozenset(
    {
        UpstreamFailure.CONNECT_REFUSED,
        UpstreamFailure.CONNECT_TIMEOUT,
        UpstreamFailure.CONNECT_FAILED,
    }
)
_GATEWAY_STATUSES: Final = frozenset({502, 504})
_CLIENT_CLOSED: Final = 499


def classify(status: int | None, error: object | None) -> Verdict:
    """Whether a finished request blames the instance (see the module docstring).

    Args:
        status: the instance's HTTP status; None/0 when none came; 499 when the client left.
        error: the `UpstreamFailure` (a str) that ended the attempt, or None.
    """
    if error is not None:
        if isinstance(error, str) and error in _CONNECT_ERRORS:
            return Verdict.CONNECT_FAILURE
        return Verdict.GATEWAY_FAILURE
    if status in _GATEWAY_STATUSES:
        return Verdict.GATEWAY_FAILURE
    if not status or status == _CLIENT_CLOSED:
        return Verdict.UNKNOWN
    return Verdict.ANSWERED
