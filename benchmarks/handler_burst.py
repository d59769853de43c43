"""`AygologHandler` under a burst: 100,000 `logger.info` calls in a tight loop, one process.

    .venv/bin/python benchmarks/handler_burst.py [--records 100000] [--instances 3] [--runs 1]

Starts a private Redis-compatible server, a real `aygolog lb` and `--instances` real `aygolog api`
processes on loopback ports, all with default settings (plus the registration token the LB
needs), then, in this process, logs `--records` records as fast as `logging` can through an
`AygologHandler` with default settings, and prints:

- dropped: records the handler dropped (its queue was full);
- stored: entries stored under the run's unique service name; duplicates: messages stored twice;
- emit: records/s of the tight loop (the caller's side), and "logging alone": the same loop
  right after, with a handler that does nothing (what `logging` itself can emit then);
- delivery: stored records/s from the first emit to the last store (stream ids carry the time
  Redis stored each entry, on this machine's clock);
- last stored: seconds from the last `emit` to the last entry stored (negative: before the loop
  ended).

Bounded: each run waits at most `--wait` seconds (default 30) for delivery. Exits 1 when a run
drops, loses or doubles anything, or stores its last entry later than 1 s after the last emit.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import secrets
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from aygolog.client import AygologHandler, LogClient
from aygolog.embedded import EmbeddedRedis
from support import ServiceProcess, wait_until


def start_stack(redis_url: str, instances: int) -> tuple[ServiceProcess, list[ServiceProcess]]:
    """The LB and the instances, registered and healthy."""
    token = secrets.token_urlsafe(16)
    common = {"AYGOLOG_REDIS_URL": redis_url, "AYGOLOG_REGISTRATION_TOKEN": token}
    lb = ServiceProcess("lb", env=common).start()
    apis = [
        ServiceProcess(
            "api", env={**common, "AYGOLOG_LB_URL": lb.url, "AYGOLOG_INSTANCE_NAME": f"api-{i}"}
        )
        for i in range(instances)
    ]
    with ThreadPoolExecutor(instances) as pool:
        list(pool.map(lambda p: p.start(timeout=30), apis))

    def registered() -> bool:
        with LogClient(lb.url) as client:
            return sum(s.status == "healthy" for s in client.services()) >= instances

    if not wait_until(registered, 20, step=0.1):
        raise RuntimeError("the instances did not register with the LB")
    return lb, apis


class _Discard(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


def logging_alone(records: int) -> float:
    """Records/s of the same loop with a handler that does nothing: what `logging` costs."""
    log = logging.getLogger("bench.alone")
    log.handlers = [_Discard()]
    log.setLevel(logging.INFO)
    log.propagate = False
    started = time.perf_counter()
    for i in range(records):
        log.info("burst record %d of the benchmark", i)
    return records / (time.perf_counter() - started)


def run(url: str, records: int, wait: float, **options: Any) -> dict[str, float]:
    """One burst; its figures (`options`: the handler's, default: none)."""
    service = f"burst-{uuid.uuid4().hex[:10]}"
    stream = io.StringIO()
    handler = AygologHandler(url, service=service, stream=stream, **options)
    log = logging.getLogger(f"bench.{service}")
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False

    first_emit = time.time()
    started = time.perf_counter()
    for i in range(records):
        log.info("burst record %d of the benchmark", i)
    emit_seconds = time.perf_counter() - started
    last_emit = time.time()

    handler.drain(wait)
    handler.close(timeout=5)
    with LogClient(url) as client:
        entries = list(client.iter_logs(service=service, limit=1000, direction="forward"))
    messages = [e.message for e in entries]
    last_stored = max((int(e.id.split("-")[0]) / 1000 for e in entries), default=float("nan"))
    figures = {
        "dropped": handler.dropped,
        "undelivered": handler.undelivered,
        "stored": len(entries),
        "unique": len(set(messages)),
        "duplicates": len(messages) - len(set(messages)),
        "emit_per_s": records / emit_seconds,
        "alone_per_s": logging_alone(records),
        "delivery_per_s": len(entries) / (last_stored - first_emit),
        "last_stored_after_emit_s": last_stored - last_emit,
    }
    if stream.getvalue():
        print(stream.getvalue().strip(), file=sys.stderr)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--wait", type=float, default=30.0)
    parser.add_argument("--max-in-flight", type=int, help="the handler's (default: its default)")
    parser.add_argument("--batch-size", type=int, help="the handler's (default: its default)")
    args = parser.parse_args()
    options = {
        name: value
        for name, value in (("max_in_flight", args.max_in_flight), ("batch_size", args.batch_size))
        if value is not None
    }

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    failed = False
    with EmbeddedRedis() as redis:
        lb, apis = start_stack(redis.url, args.instances)
        try:
            for n in range(args.runs):
                f = run(lb.url, args.records, args.wait, **options)
                ok = (
                    f["dropped"] == 0
                    and f["stored"] == f["unique"] == args.records
                    and f["last_stored_after_emit_s"] <= 1.0
                )
                failed |= not ok
                print(
                    f"run {n + 1}: dropped {f['dropped']:.0f}, stored {f['stored']:.0f}"
                    f" (unique {f['unique']:.0f}), duplicates {f['duplicates']:.0f},"
                    f" emit {f['emit_per_s']:,.0f}/s (logging alone {f['alone_per_s']:,.0f}/s),"
                    f" delivery {f['delivery_per_s']:,.0f}/s,"
                    f" last stored {f['last_stored_after_emit_s']:+.3f} s after the last emit"
                    f" -> {'ok' if ok else 'FAIL'}"
                )
        finally:
            for api in apis:
                api.close()
            lb.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
