"""Follow logs live with the SDK: print entries as they are stored, then exit after `--count`.

    python examples/live_tail.py [--url URL] [--count N] [--service NAME] [--min-level LEVEL]
    python examples/live_tail.py --produce      # also sends a few entries itself, to watch

URL is the load balancer (or one Log API instance); default `$AYGOLOG_URL`, else
http://127.0.0.1:8080 (what `aygolog up` starts). Run it, then send logs from another terminal
(`aygolog send "hello" --level warning`) or from your app. The tail is Server-Sent Events: it
reconnects by itself and resumes after the last entry it got, so a restart of the server
loses nothing. Needs only the base install: pip install aygolog.
"""

from __future__ import annotations

import argparse
import os
import threading

from aygolog.client import LogClient, Tail, TailDropped


def produce(client: LogClient, tail: Tail, service: str | None, count: int) -> None:
    """Send `count` entries once the tail is subscribed (so none of them passes it by)."""
    tail.connected.wait(10)
    levels = ("info", "warning", "error")
    for n in range(count):
        client.log(f"demo entry {n + 1}", level=levels[n % 3], service=service, n=n + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("AYGOLOG_URL") or "http://127.0.0.1:8080")
    parser.add_argument("--count", type=int, default=10, help="stop after N entries")
    parser.add_argument("--service", default=None, help="only this service")
    parser.add_argument("--min-level", default=None, help="only this level or more severe")
    parser.add_argument("--produce", action="store_true", help="send --count entries too")
    args = parser.parse_args()

    def dropped(gap: TailDropped) -> None:
        # A slow reader is told what it missed; the tail fetches it from the store by itself.
        print(f"(fell behind: {gap.count} entries skipped, recovering={gap.recovering})")

    with LogClient(args.url) as client:
        filters = {"service": args.service} if args.service else {}
        with client.tail(min_level=args.min_level, on_dropped=dropped, **filters) as tail:
            if args.produce:
                threading.Thread(
                    target=produce, args=(client, tail, args.service, args.count), daemon=True
                ).start()
            print(f"following {args.url} for {args.count} entries (Ctrl-C stops)", flush=True)
            try:
                for seen, entry in enumerate(tail, start=1):
                    when = entry.timestamp.strftime("%H:%M:%S.%f")[:-3]
                    where = f"{entry.service or '-'} [{entry.instance}]"
                    extra = entry.attributes or ""
                    line = f"{when} {entry.level:<8} {where} {entry.message} {extra}"
                    print(line.rstrip(), flush=True)
                    if seen >= args.count:
                        break
            except KeyboardInterrupt:
                pass
            print(f"done; resume later after id {tail.last_event_id}")


if __name__ == "__main__":
    main()
