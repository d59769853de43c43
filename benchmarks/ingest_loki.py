"""Logs/s through the load balancer: Loki push JSON batches next to `POST /api/logs`, same run.

    .venv/bin/python benchmarks/ingest_loki.py [--batch 1000] [--seconds 5] [--runs 3]

Needs `wrk`. The same set-up and wrk driver as `ingest_protocols.py` (a live stack: private
Redis, the LB, 3 `aygolog api` instances; every request's body made unique by a counter, so the
Loki route's retry key never turns a request into a replay), alternating:

- `POST /api/logs`: a JSON array (the reference);
- `POST /loki/api/v1/push`: one stream per (service, level), the attributes as structured
  metadata, plain and gzip.

Prints logs/s per way, the ratio to `/api/logs`, and the CPU the stack spent per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from _common import cpu_seconds, loadavg, process_tree, run_header, sample_logs
from aygolog.models import NewLog
from ingest_protocols import MARK, api_body, wrk
from support import LiveStack


def loki_body(logs: list[NewLog]) -> bytes:
    now = time.time_ns()
    streams: dict[tuple[str, str], list[list[object]]] = {}
    for i, log in enumerate(logs):
        metadata = {key: str(value) for key, value in log.attributes.items()}
        if i == 0:
            metadata["batch"] = MARK
        values = streams.setdefault((log.service or "", log.level.value), [])
        values.append([str(now + i), log.message, metadata])
    return json.dumps(
        {
            "streams": [
                {"stream": {"service_name": service, "level": level}, "values": values}
                for (service, level), values in streams.items()
            ]
        }
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(run_header("ingest through the LB: Loki push JSON vs POST /api/logs"))
    logs = sample_logs(args.batch)
    json_kind = "application/json"
    ways = {
        "POST /api/logs (JSON array)": ("/api/logs", json_kind, api_body(logs), False),
        "POST /loki/api/v1/push (JSON)": ("/loki/api/v1/push", json_kind, loki_body(logs), False),
        "POST /loki/api/v1/push (JSON, gzip)": ("/loki/api/v1/push", json_kind,
                                                loki_body(logs), True),
    }  # fmt: skip
    os.environ.setdefault("AYGOLOG_LB_WORKERS", "1")
    rates: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as data:
        stack = LiveStack(Path(data), prefix="bench-loki")
        try:
            stack.start()
            assert stack.lb is not None
            assert stack.lb.process is not None
            assert stack.redis.pid is not None
            parts = [p.process.pid for p in stack.instances if p.process is not None]
            processes = [pid for part in parts for pid in process_tree(part)]
            everything = [*processes, *process_tree(stack.lb.process.pid), stack.redis.pid]
            for run in range(args.runs):
                for name, (path, kind, body, gzipped) in ways.items():
                    before = cpu_seconds(everything)
                    rps = wrk(stack.url, path, kind, body, args.seconds, gzipped)
                    spent = (cpu_seconds(everything) - before) / (rps * args.seconds) * 1000
                    rates[name].append(rps * args.batch)
                    cpu[name].append(spent)
                    print(f"run {run + 1} {name}: {rps * args.batch:,.0f} logs/s; CPU per "
                          f"batch (LB+instances+Redis) {spent:.1f} ms (load {loadavg()})",
                          flush=True)  # fmt: skip
        finally:
            stack.close()
    reference = statistics.median(rates["POST /api/logs (JSON array)"])
    reference_cpu = statistics.median(cpu["POST /api/logs (JSON array)"])
    print(
        f"\n| way (batches of {args.batch}) | logs/s, median of {args.runs} | vs /api/logs "
        "| CPU ms per batch (LB+instances+Redis) | /api/logs CPU over this |"
    )
    print("|---|---|---|---|---|")
    for name, values in rates.items():
        middle, spent = statistics.median(values), statistics.median(cpu[name])
        print(f"| {name} | {middle:,.0f} | {middle / reference:.2f}x | {spent:.1f} "
              f"| {reference_cpu / spent:.2f}x |")  # fmt: skip
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
