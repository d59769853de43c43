"""The exceptions aygolog raises, one hierarchy for the library, the services and the SDK.

```
AygologError                 base of everything aygolog raises on purpose
├── ValidationError          bad input; .errors lists each field (and batch index) with the reason
│   └── MalformedInput       the body is not even well-formed (broken JSON)
├── Conflict                 the request clashes with stored state (an idempotency
│                            key reused with a different body)
├── NotFound                 the named thing does not exist (e.g. an unknown instance)
├── AuthError                missing or wrong credentials (401/403)
├── RateLimited              the server asked to slow down (429); .retry_after
└── Unavailable              a dependency is unreachable (Redis, the LB, an instance)
    └── NoHealthyInstance    the balancer has no instance to send to
```

Redis and network errors are never swallowed into an empty result: the store and the registry
raise `Unavailable` from the original exception, so "no data" and "Redis is down" stay distinct.
"""

from __future__ import annotations

from collections.abc import Sequence

from aygolog.models import FieldError

__all__ = [
    "AuthError",
    "AygologError",
    "Conflict",
    "MalformedInput",
    "NoHealthyInstance",
    "NotFound",
    "RateLimited",
    "Unavailable",
    "ValidationError",
]


class AygologError(Exception):
    """Base class of every error aygolog raises on purpose."""


class ValidationError(AygologError, ValueError):
    """Input was refused; `errors` names each bad field and, in a batch, the item's index."""

    def __init__(self, errors: Sequence[FieldError], message: str | None = None) -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__(message or _summarise(self.errors))


class MalformedInput(ValidationError):
    """The input could not be parsed at all (e.g. broken JSON)."""


class Conflict(AygologError):
    """The request clashes with what is stored (e.g. an idempotency key reused for other data)."""


class NotFound(AygologError, LookupError):
    """The named thing does not exist."""


class AuthError(AygologError):
    """Credentials are missing or wrong."""


class RateLimited(AygologError):
    """The server asked the client to slow down."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(AygologError):
    """A dependency (Redis, the load balancer, an instance) cannot be reached right now."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoHealthyInstance(Unavailable, LookupError):
    """The balancer has no healthy instance to send the request to."""


def _summarise(errors: Sequence[FieldError]) -> str:
    if not errors:
        return "invalid input"
    parts = [err.describe() for err in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more
