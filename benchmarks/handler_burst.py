"""`AygologHandler` under a burst: 100,000 `logger.info` calls in a tight loop, one process.

    .venv/bin/python benchmarks/handler_burst.py [--records 100000] [--instances 3] [--runs 1]
        [--drain] [--compress]

Starts a private Redis-compatible server, a real `aygolog lb` and `--instances` real `aygolog api`
processes on loopback ports, all with default settings (plus the registration token the LB
needs), then, in this process, logs `--records` records as fast as `logging` can through an
`AygologHandler` with default settings, and prints:

- dropped: records the handler dropped (its queue was full); peak queue: the most records that
  waited in its queue at once (how close the burst came to the capacity of 10,000);
- stored: entries stored under the run's unique service name; duplicates: messages stored twice;
- emit: records/s of the tight loop (the caller's side), and "logging alone": the same loop
  right after, with a handler that does nothing (what `logging` itself can emit then);
- delivery: stored records/s from the first emit to the last store (stream ids carry the time
  Redis stored each entry, on this machine's clock);
- last stored: seconds from the last `emit` to the last entry stored (negative: before the loop
  ended);
- CPU per record, less noisy than the rates on a busy machine: "loop" is the logging thread's
  (`logging` itself plus `emit`; "alone": the same loop with the handler that does nothing),
  "senders" the rest of this process's from the first emit until everything is delivered (the
  handler's threads: encoding, HTTP).

`--drain` measures the senders alone: the records are put on the handler's queue at once (as
`emit` would, with no `logging` loop competing for the GIL and a capacity that holds them all);
delivery is then how fast the handler can empty a full queue.

`--compress`: the handler gzips its batches (`compress=True`); `--max-in-flight`, `--batch-size`,
`--max-batch-size` set the handler's own; all other settings stay the defaults.

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
from support import ServiceProcess, children, wait_until

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by a process and its live descendants (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return own + sum(tree_cpu(child) for child in children(pid))


def start_stack(redis_url: str, instances: int) -> tuple[ServiceProcess, list[ServiceProcess]]:
    """The LB and the instances, registered and healthy."""
    token = secrets.token_urlsafe(16)
    common = {"AYGOLOG_REDIS_URL": redis_url, "AYGOLOG_REGISTRATION_TOKEN": token}
    lb = ServiceProcess("lb", env=common).start(timeout=60)  # a busy machine starts slowly
    apis = [
        ServiceProcess(
            "api", env={**common, "AYGOLOG_LB_URL": lb.url, "AYGOLOG_INSTANCE_NAME": f"api-{i}"}
        )
        for i in range(instances)
    ]
    with ThreadPoolExecutor(instances) as pool:
        list(pool.map(lambda p: p.start(timeout=60), apis))

    def registered() -> bool:
        with LogClient(lb.url) as client:
            return sum(s.status == "healthy" for s in client.services()) >= instances

    if not wait_until(registered, 20, step=0.1):
        raise RuntimeError("the instances did not register with the LB")
    return lb, apis


class _Discard(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


def logging_alone(records: int) -> tuple[float, float]:
    """Records/s and CPU s/record of the same loop with a handler that does nothing: what
    `logging` costs."""
    log = logging.getLogger("bench.alone")
    log.handlers = [_Discard()]
    log.setLevel(logging.INFO)
    log.propagate = False
    started = time.perf_counter()
    cpu_started = time.thread_time()
    for i in range(records):
        log.info("burst record %d of the benchmark", i)
    cpu = time.thread_time() - cpu_started
    return records / (time.perf_counter() - started), cpu / records


def fill(handler: AygologHandler, log: logging.Logger, records: int) -> None:
    """Put `records` plain records on the handler's queue at once (its private structure, as
    `emit` leaves them), for `--drain`."""
    now = time.monotonic()
    created = time.time()
    items = [
        (now, (created, "INFO", logging.INFO, log.name, f"burst record {i} of the benchmark"))
        for i in range(records)
    ]
    with handler._cond:
        handler._queue.extend(items)
        handler._cond.notify_all()


def stack_cpu(stack: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each part of the stack (its processes' trees)."""
    return {part: sum(tree_cpu(pid) for pid in pids) for part, pids in stack.items()}


def run(
    url: str,
    records: int,
    wait: float,
    stack: dict[str, list[int]],
    *,
    drain: bool = False,
    **options: Any,
) -> dict[str, float]:
    """One burst; its figures (`options`: the handler's, default: none)."""
    service = f"burst-{uuid.uuid4().hex[:10]}"
    stream = io.StringIO()
    if drain:
        options["capacity"] = records
    handler = AygologHandler(url, service=service, stream=stream, **options)
    log = logging.getLogger(f"bench.{service}")
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False

    stack_started = stack_cpu(stack)
    first_emit = time.time()
    cpu_started = time.process_time()
    loop_cpu_started = time.thread_time()
    started = time.perf_counter()
    if drain:
        fill(handler, log, records)
    else:
        for i in range(records):
            log.info("burst record %d of the benchmark", i)
    emit_seconds = time.perf_counter() - started
    loop_cpu = time.thread_time() - loop_cpu_started
    last_emit = time.time()

    handler.drain(wait)
    senders_cpu = time.process_time() - cpu_started - loop_cpu
    stack_used = {k: v - stack_started[k] for k, v in stack_cpu(stack).items()}
    handler.close(timeout=5)
    with LogClient(url) as client:
        entries = list(client.iter_logs(service=service, limit=1000, direction="forward"))
    messages = [e.message for e in entries]
    last_stored = max((int(e.id.split("-")[0]) / 1000 for e in entries), default=float("nan"))
    alone_per_s, alone_cpu = logging_alone(records)
    figures = {
        "dropped": handler.dropped,
        "peak_queued": getattr(handler, "peak_queued", float("nan")),
        "undelivered": handler.undelivered,
        "stored": len(entries),
        "unique": len(set(messages)),
        "duplicates": len(messages) - len(set(messages)),
        "emit_per_s": records / emit_seconds,
        "alone_per_s": alone_per_s,
        "delivery_per_s": len(entries) / (last_stored - first_emit),
        "last_stored_after_emit_s": last_stored - last_emit,
        "loop_cpu_us": loop_cpu / records * 1e6,
        "alone_cpu_us": alone_cpu * 1e6,
        "senders_cpu_us": senders_cpu / records * 1e6,
        **{f"{part}_cpu_us": used / records * 1e6 for part, used in stack_used.items()},
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
    parser.add_argument("--max-batch-size", type=int, help="the handler's (default: its default)")
    parser.add_argument("--compress", action="store_true", help="the handler gzips its batches")
    parser.add_argument("--drain", action="store_true", help="measure the senders alone")
    args = parser.parse_args()
    chosen = {
        "max_in_flight": args.max_in_flight,
        "batch_size": args.batch_size,
        "max_batch_size": args.max_batch_size,
    }
    options: dict[str, Any] = {k: v for k, v in chosen.items() if v is not None}
    if args.compress:
        options["compress"] = True

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    failed = False
    with EmbeddedRedis() as redis:
        lb, apis = start_stack(redis.url, args.instances)
        pids = {
            "lb": [lb.process.pid] if lb.process else [],
            "instances": [api.process.pid for api in apis if api.process],
            "redis": [redis.pid] if redis.pid else [],
        }
        try:
            for n in range(args.runs):
                f = run(lb.url, args.records, args.wait, pids, drain=args.drain, **options)
                ok = (
                    f["dropped"] == 0
                    and f["stored"] == f["unique"] == args.records
                    and (args.drain or f["last_stored_after_emit_s"] <= 1.0)
                )
                failed |= not ok
                print(
                    f"run {n + 1}: dropped {f['dropped']:.0f} (peak queue {f['peak_queued']:.0f}),"
                    f" stored {f['stored']:.0f}"
                    f" (unique {f['unique']:.0f}), duplicates {f['duplicates']:.0f},"
                    f" emit {f['emit_per_s']:,.0f}/s (logging alone {f['alone_per_s']:,.0f}/s),"
                    f" delivery {f['delivery_per_s']:,.0f}/s,"
                    f" last stored {f['last_stored_after_emit_s']:+.3f} s after the last emit,"
                    f" CPU µs/record: loop {f['loop_cpu_us']:.1f} (alone {f['alone_cpu_us']:.1f}),"
                    f" senders {f['senders_cpu_us']:.1f}; the LB {f['lb_cpu_us']:.1f},"
                    f" the instances {f['instances_cpu_us']:.1f}, Redis {f['redis_cpu_us']:.1f}"
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
