"""Client-side balancing: the SDK sends straight to the Log API instances, not through the LB.

    python examples/client_side_balancing.py [--url URL] [--count N] [--strategy NAME]

URL is the load balancer; default `$AYGOLOG_URL`, else http://127.0.0.1:8080 (what `aygolog up`
starts). With `balance="client"` the client reads the LB's list of healthy instances
(`GET /api/registration/services`, refreshed every few seconds) and picks one per request with a
strategy from `aygolog.balancing` (here round robin, so the spread is easy to see). Retries and
the moments when the list is unavailable go to the LB, which knows the full health picture.
Every stored entry says which `instance` stored it. Needs only the base install.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections import Counter

from aygolog.client import LogClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("AYGOLOG_URL") or "http://127.0.0.1:8080")
    parser.add_argument("--count", type=int, default=9, help="how many single logs to send")
    parser.add_argument("--strategy", default="round_robin", help="a name from aygolog.balancing")
    parser.add_argument("--service", default=f"balancing-{uuid.uuid4().hex[:6]}")
    args = parser.parse_args()

    # max_batch_items=1000 only to show several batches below; the default is 10,000.
    with LogClient(
        args.url,
        balance="client",
        strategy=args.strategy,
        service=args.service,
        max_batch_items=1000,
    ) as client:
        # The instances the client balances over (the LB's list, healthy ones only).
        views = client.services()
        for view in views:
            print(f"instance {view.name} at {view.url}: {view.status}")
        proxied_before = sum(view.served or 0 for view in views)

        served = Counter[str]()
        for n in range(1, args.count + 1):
            entry = client.log(f"order {n} paid", order=n)
            served[entry.instance] += 1
            print(f"log {n} stored by {entry.instance}")

        # Batches are balanced too: each request of log_many goes to one instance.
        results = client.log_many([f"line {n}" for n in range(2500)])
        for result in results:
            print(f"batch of {result.count} stored by {result.instance}")

        spread = ", ".join(f"{name}: {count}" for name, count in sorted(served.items()))
        print(f"{len(served)} instance(s) served the {args.count} logs ({spread})")
        # The LB counts what it proxies: none of the above went through it.
        proxied = sum(view.served or 0 for view in client.services()) - proxied_before
        print(f"requests the load balancer proxied meanwhile: {proxied}")


if __name__ == "__main__":
    main()
