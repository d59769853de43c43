"""Diagnosis, not a test: clients that never read, straight at ONE Log API instance (no LB),
under granian and under uvicorn (`aygolog api --server ...`).

    .venv/bin/python tests/adversarial/never_read_direct.py [attackers] [--read | --single]

For each server: a private Redis, one instance, 300 entries of 4 KiB; paced good clients
(`goodload.py`) measured 2 s alone, then 3 s while `attackers` connections (default 10) each
pipeline 8 `GET /api/logs?limit=300` (~1.3 MiB answers) and never read (with `--read`: each
sends one such request and reads its answer, the control: the same queries, no back-pressure;
with `--single`: one request each, never read, no pipelining).
Prints one line per server. Bounded: about 30 s in all; every process it starts is stopped.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: support, adversarial

from adversarial.harness import GoodClients, plain_client, raw_connections
from aygolog.embedded import EmbeddedRedis
from support import ServiceProcess


async def measure(url: str, attackers: int, read: bool, single: bool) -> str:
    big = f"big-{uuid.uuid4().hex[:8]}"
    entries = [{"service": big, "message": f"{i} " + "x" * 4096} for i in range(300)]
    async with plain_client(url, 30.0) as client:
        assert (await client.post("/api/logs", json=entries)).status_code == 201
    good = GoodClients(url, tag=f"good-{uuid.uuid4().hex[:8]}")
    try:
        baseline = await good.run()
        request = b"GET /api/logs?service=%s&limit=300 HTTP/1.1\r\nHost: a\r\n\r\n" % big.encode()
        async with raw_connections(url, attackers) as conns:
            for conn in conns:
                await conn.send(request if read or single else request * 8)
            if read:
                answers = await asyncio.gather(*(c.response(within=30.0) for c in conns))
                assert all(a is not None and a.status == 200 for a in answers)
            attacked = await good.run(3.0)
    finally:
        good.close()
    return (
        f"baseline {baseline.count} requests p50 {baseline.percentile(0.5) * 1000:.0f} ms "
        f"p99 {baseline.p99 * 1000:.0f} ms; with {attackers} "
        f"{'reading' if read else 'never-reading'} clients "
        f"({'1 request' if read or single else '8 pipelined'} each) "
        f"{attacked.count} requests p50 {attacked.percentile(0.5) * 1000:.0f} ms "
        f"p99 {attacked.p99 * 1000:.0f} ms"
    )


def main() -> None:
    numbers = [arg for arg in sys.argv[1:] if arg.isdigit()]
    attackers = int(numbers[0]) if numbers else 10
    read = "--read" in sys.argv[1:]
    single = "--single" in sys.argv[1:]
    with EmbeddedRedis() as redis:
        for server in ("granian", "uvicorn"):
            env = {
                "AYGOLOG_REDIS_URL": redis.url,
                "AYGOLOG_REDIS_PREFIX": f"diag-{server}",
                "AYGOLOG_INSTANCE_NAME": f"diag-{server}",
            }
            api = ServiceProcess("api", env=env, args=("--server", server)).start(timeout=30)
            try:
                print(
                    f"{server}: {asyncio.run(measure(api.url, attackers, read, single))}",
                    flush=True,
                )
            finally:
                api.close()


if __name__ == "__main__":
    main()
