"""Logs/s through the load balancer: OTLP protobuf and Loki JSON batches next to
`POST /api/logs`, same run.

    .venv/bin/python benchmarks/ingest_protocols.py [--batch 1000] [--seconds 5] [--runs 3]

Needs `wrk`. Starts a live stack (private Redis, the LB, 3 `aygolog api` instances), then, in
alternating rounds, wrk POSTs batches of `--batch` logs (the same messages, levels, services and
attributes each way) to:

- `POST /api/logs`: a JSON array (aygolog's own batch endpoint, the reference);
- `POST /v1/logs`: an OTLP `ExportLogsServiceRequest` in protobuf, plain and gzip;
- `POST /loki/api/v1/push`: Loki JSON, one stream per (service, level), the attributes as
  structured metadata, plain and gzip.

Every request's body differs (wrk's Lua writes a per-thread counter into a fixed-width attribute
of the first log), so the routes' retry keys never turn a request into a replay: each one
stores its whole batch. Prints logs/s per way and the ratio to `/api/logs`, and the CPU time the
stack (instances; LB + instances + Redis) spent per batch, read from /proc: on a busy machine
the rates swing with the load, the CPU per batch much less.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from _common import cpu_seconds, loadavg, process_tree, run_header, sample_logs
from _wrk import parse
from aygolog.models import LogLevel, NewLog
from support import LiveStack

MARK = "BATCHIDXXXXXXXXX"  # 16 characters; wrk writes "%04d%012d" (thread, counter) over it
_SEVERITY = {LogLevel.INFO: 9, LogLevel.ERROR: 17}

SCRIPT = """
local prefix = io.open("{prefix}", "rb"):read("*all")
local suffix = io.open("{suffix}", "rb"):read("*all")
local counter = 0
local threads = 0
function setup(thread)
   threads = threads + 1
   thread:set("id", threads)
end
function request()
   counter = counter + 1
   local body = prefix .. string.format("%04d%012d", id, counter) .. suffix
   return wrk.format("POST", "{path}", {{["Content-Type"] = "{kind}"{extra}}}, body)
end
"""


def api_body(logs: list[NewLog]) -> bytes:
    items = [
        {
            "message": log.message,
            "level": log.level.value,
            "service": log.service,
            "attributes": {**log.attributes, **({"batch": MARK} if i == 0 else {})},
        }
        for i, log in enumerate(logs)
    ]
    return json.dumps(items).encode()


def otlp_body(logs: list[NewLog]) -> bytes:
    now = time.time_ns()
    request = ExportLogsServiceRequest()
    for service in sorted({log.service or "" for log in logs}):
        resource_logs = request.resource_logs.add()
        resource_logs.resource.attributes.append(
            KeyValue(key="service.name", value=AnyValue(string_value=service))
        )
        records = resource_logs.scope_logs.add().log_records
        for i, log in enumerate(logs):
            if log.service != service:
                continue
            record = records.add()
            record.time_unix_nano = now + i
            record.severity_number = _SEVERITY[log.level]  # type: ignore[assignment]
            record.body.string_value = log.message
            for key, value in log.attributes.items():
                any_value = (
                    AnyValue(int_value=value)
                    if isinstance(value, int)
                    else AnyValue(string_value=str(value))
                )
                record.attributes.append(KeyValue(key=key, value=any_value))
            if i == 0:
                record.attributes.append(KeyValue(key="batch", value=AnyValue(string_value=MARK)))
    return request.SerializeToString()


def loki_body(logs: list[NewLog]) -> bytes:
    """A Loki push (JSON) of `logs`: a stream per (service, level), attributes as metadata."""
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


def wrk(url: str, path: str, kind: str, body: bytes, seconds: float, gzipped: bool) -> float:
    """Requests/s of POSTing `body` (with MARK made unique per request) to `url + path`."""
    prefix, found, suffix = body.partition(MARK.encode())
    assert found, "the marker is missing from the body"
    extra = ', ["Content-Encoding"] = "gzip"' if gzipped else ""
    with tempfile.TemporaryDirectory() as tmp:
        files = {"prefix": Path(tmp) / "prefix", "suffix": Path(tmp) / "suffix"}
        files["prefix"].write_bytes(prefix)
        files["suffix"].write_bytes(suffix)
        script = Path(tmp) / "post.lua"
        lua = SCRIPT.format(path=path, kind=kind, extra=extra, **files)
        if gzipped:
            # One gzip member per part: a gzip body may hold several (RFC 1952), and the
            # counter between them stays plain text inside its own member.
            lua = lua.replace(
                "local body = prefix .. string.format",
                "local body = prefix .. gz(string.format",
            ).replace("counter) .. suffix", "counter)) .. suffix")
            lua = _gzip_lua(lua, files["prefix"], files["suffix"], prefix, suffix)
        script.write_text(lua)
        done = subprocess.run(
            ["wrk", "-t2", "-c8", f"-d{seconds:g}s", "--timeout=10s", "--latency",
             "-s", str(script), url],
            capture_output=True, text=True, check=False, timeout=seconds + 60,
        )  # fmt: skip
    result = parse(done.stdout)
    if result.non_2xx or result.socket_error_count:
        raise RuntimeError(f"failed requests:\n{done.stdout}\n{done.stderr}")
    return result.requests_per_second


def _gzip_lua(lua: str, prefix_file: Path, suffix_file: Path, prefix: bytes, suffix: bytes) -> str:
    # The fixed parts are compressed once here; the 16-byte counter is stored in a gzip member
    # of its own written by Lua (a "stored" deflate block: no compression code needed in Lua).
    prefix_file.write_bytes(gzip.compress(prefix))
    suffix_file.write_bytes(gzip.compress(suffix))
    header = "\\x1f\\x8b\\x08\\x00\\x00\\x00\\x00\\x00\\x00\\xff"
    member = f"""
local function le32(n)
   return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256,
                      math.floor(n / 16777216) % 256)
end
local crc_table = {{}}
for i = 0, 255 do
   local c = i
   for _ = 1, 8 do
      if c % 2 == 1 then c = bit.bxor(bit.rshift(c, 1), 0xEDB88320) else c = bit.rshift(c, 1) end
   end
   crc_table[i] = c
end
local function crc32(s)
   local c = 0xFFFFFFFF
   for i = 1, #s do
      c = bit.bxor(crc_table[bit.band(bit.bxor(c, s:byte(i)), 0xFF)], bit.rshift(c, 8))
   end
   c = bit.bxor(c, 0xFFFFFFFF)
   if c < 0 then c = c + 4294967296 end
   return c
end
function gz(s)
   local n = #s
   return "{header}" .. "\\x01" .. string.char(n % 256, math.floor(n / 256)) ..
      string.char(255 - n % 256, 255 - math.floor(n / 256)) .. s .. le32(crc32(s)) .. le32(n)
end
"""
    return member + lua


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(run_header("ingest protocols through the LB: OTLP protobuf, Loki JSON vs POST /api/logs"))
    logs = sample_logs(args.batch)
    ways = {
        "POST /api/logs (JSON array)": ("/api/logs", "application/json", api_body(logs), False),
        "POST /v1/logs (OTLP protobuf)": ("/v1/logs", "application/x-protobuf",
                                          otlp_body(logs), False),
        "POST /v1/logs (OTLP protobuf, gzip)": ("/v1/logs", "application/x-protobuf",
                                                otlp_body(logs), True),
        "POST /loki/api/v1/push (JSON)": ("/loki/api/v1/push", "application/json",
                                          loki_body(logs), False),
        "POST /loki/api/v1/push (JSON, gzip)": ("/loki/api/v1/push", "application/json",
                                                loki_body(logs), True),
    }  # fmt: skip
    # One LB worker, as the tests run it: the bench compares routes, not LB scaling.
    os.environ.setdefault("AYGOLOG_LB_WORKERS", "1")
    rates: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as data:
        stack = LiveStack(Path(data), prefix="bench-ingest")
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
                    before = cpu_seconds(processes), cpu_seconds(everything)
                    rps = wrk(stack.url, path, kind, body, args.seconds, gzipped)
                    after = cpu_seconds(processes), cpu_seconds(everything)
                    batches = rps * args.seconds
                    api_ms = (after[0] - before[0]) / batches * 1000
                    all_ms = (after[1] - before[1]) / batches * 1000
                    rates[name].append(rps * args.batch)
                    cpu[name].append(all_ms)
                    print(f"run {run + 1} {name}: {rps * args.batch:,.0f} logs/s; CPU per batch: "
                          f"instances {api_ms:.1f} ms, LB+instances+Redis {all_ms:.1f} ms "
                          f"(load {loadavg()})", flush=True)  # fmt: skip
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
