"""The aygolog client SDK in five minutes: store, batch, search, page, follow live, handle errors.

    python examples/sdk_quickstart.py [URL] [--service NAME]

URL is the load balancer (or one Log API instance); default `$AYGOLOG_URL`, else
http://127.0.0.1:8080 (what `aygolog up` starts). Needs only the base install: pip install aygolog.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading

from aygolog import LogLevel, Unavailable, ValidationError
from aygolog.client import AsyncLogClient, LogClient


def sync_tour(url: str, service: str) -> None:
    # `service` fills in entries that name none; retries and timeouts have sane defaults.
    with LogClient(url, service=service) as client:
        # One entry. Extra keyword arguments become attributes.
        entry = client.log("user signed in", level="info", user="ana", plan="pro")
        print(f"stored {entry.id} on {entry.instance}: {entry.message} {entry.attributes}")

        # Many entries: split into as few requests as the server allows, each retried safely
        # (an Idempotency-Key per batch, so a retry never stores twice).
        orders = [
            {"message": f"order {n} paid", "attributes": {"order": n, "eur": n * 10}}
            for n in range(1, 201)
        ]
        orders.append({"message": "payment provider timeout", "level": "error"})
        results = client.log_many(orders)
        print(f"batch: {sum(r.count for r in results)} entries in {len(results)} request(s)")

        # Search: filters, newest first; `since` takes relative times.
        errors = client.query(service=service, min_level=LogLevel.ERROR, since="5m")
        print("errors in the last 5 minutes:", [e.message for e in errors.items])
        big = client.query(service=service, attributes={"eur": 2000})
        print("the 2000 EUR order:", [e.message for e in big.items])

        # The same in the query language (docs/query.md), and counts per group.
        found = client.query(f"service:{service} eur:>=1990 -timeout")
        print("orders of 1990 EUR or more:", [e.message for e in found.items])
        per_level = client.count(f"service:{service} | count() by (level)")
        print("per level:", {s.labels["level"]: s.counts[0] for s in per_level.series})

        # Everything, page after page (the SDK follows `next_cursor`).
        total = sum(1 for _ in client.iter_logs(service=service, limit=50))
        print(f"entries of {service}: {total}")

        # Follow new entries live (SSE; reconnects and resumes by itself).
        with client.tail(service=service, min_level="warning") as tail:

            def produce() -> None:
                tail.connected.wait(10)
                client.log("disk almost full", level="warning", percent=91)

            threading.Thread(target=produce, daemon=True).start()
            for live in tail:
                print(f"live: {live.level} {live.message} {live.attributes}")
                break

        # Errors are typed; a refusal names the field.
        try:
            client.log("", level="info")
        except ValidationError as exc:
            print("refused:", [f"{e.field}: {e.reason}" for e in exc.errors])
        except Unavailable as exc:
            print("the service is unavailable:", exc)


async def async_tour(url: str, service: str) -> None:
    # The same API for asyncio; `aclose()` / `async with`.
    async with AsyncLogClient(url, service=service) as client:
        await client.log("hello from asyncio")
        page = await client.query(service=service, text="asyncio")
        print("async query:", [e.message for e in page.items])
        stats = await client.stats()
        print(f"stats: {stats.by_service.get(service, 0)} entries of {service} stored")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("AYGOLOG_URL", ""))
    parser.add_argument("--service", default="quickstart")
    args = parser.parse_args()
    url = args.url or "http://127.0.0.1:8080"
    sync_tour(url, args.service)
    asyncio.run(async_tour(url, args.service))


if __name__ == "__main__":
    main()
