"""Ship Python's `logging` to aygolog with `AygologHandler`.

    python examples/logging_handler.py [URL] [--service NAME] [--spool DIR]

URL is the load balancer (or one Log API instance); default `$AYGOLOG_URL`, else
http://127.0.0.1:8080. The handler never blocks your code on the network: records are queued and
sent in batches by background threads, retried through outages, and (with `--spool`) kept on
disk until the server is back, even across restarts of this program.
"""

from __future__ import annotations

import argparse
import logging
import os

from aygolog.client import AygologHandler, LogClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("AYGOLOG_URL", ""))
    parser.add_argument("--service", default="handler-example")
    parser.add_argument("--spool", default=None, help="a directory for undeliverable batches")
    args = parser.parse_args()
    url = args.url or "http://127.0.0.1:8080"

    handler = AygologHandler(url, service=args.service, spool_dir=args.spool)
    logging.basicConfig(level=logging.INFO, handlers=[handler, logging.StreamHandler()])
    log = logging.getLogger("shop.checkout")

    log.info("checkout started for %s", "ana")
    # `extra` fields become attributes (anything that is not a str/number/bool as a string).
    log.warning("slow payment provider", extra={"provider": "acme", "ms": 1840, "retry": True})
    basket: dict[str, int] = {}
    try:
        print(basket["missing"])
    except KeyError:
        # The formatted traceback goes into the attribute `exception`.
        log.exception("could not read the basket")
    for n in range(100):
        log.debug("not sent: below the logger's level (%d)", n)
    for n in range(250):
        log.info("item %d scanned", n, extra={"item": n})

    # logging.shutdown() runs at exit and closes the handler: it delivers what is queued within
    # `close_timeout` (5 s) and says on stderr what it could not. Here we close explicitly to
    # show the counters.
    logging.getLogger().removeHandler(handler)
    handler.close()
    counts = f"sent {handler.sent}, dropped {handler.dropped}, undelivered {handler.undelivered}"
    print(f"handler: {counts}")

    with LogClient(url) as client:
        problems = client.query(service=args.service, min_level="warning")
        for entry in reversed(problems.items):
            exception = str(entry.attributes.get("exception", ""))
            last_line = exception.strip().splitlines()[-1] if exception else ""
            print(f"stored: {entry.level} [{entry.attributes['logger']}] {entry.message}"
                  f" {last_line}".rstrip())  # fmt: skip


if __name__ == "__main__":
    main()
