"""The aygolog client SDK: `LogClient`, `AsyncLogClient`, live tails, and `AygologHandler`.

    from aygolog.client import LogClient

    with LogClient("http://127.0.0.1:8080", service="checkout") as client:
        entry = client.log("payment accepted", level="info", order=42)
        page = client.query("service:checkout level>=warning _time:15m timeout")
        page = client.query(service="checkout", min_level="warning", since="15m")
        counts = client.count("level>=warning | count() by (service) step 1m")
        for entry in client.tail(service="checkout"):
            print(entry.message)

Errors are those of `aygolog.errors` (all under `AygologError`). Retries follow `RetryPolicy`
(see `aygolog.client._base` for the exact rules).
"""

from aygolog.client._async import AsyncLogClient, AsyncTail
from aygolog.client._base import (
    CountFilters,
    PreparedBatch,
    QueryFilters,
    RetryPolicy,
    ServiceView,
    TailDropped,
    TailFilters,
)
from aygolog.client._sync import LogClient, Tail
from aygolog.client.handler import AygologHandler, Spool

__all__ = [
    "AsyncLogClient",
    "AsyncTail",
    "AygologHandler",
    "CountFilters",
    "LogClient",
    "PreparedBatch",
    "QueryFilters",
    "RetryPolicy",
    "ServiceView",
    "Spool",
    "Tail",
    "TailDropped",
    "TailFilters",
]
