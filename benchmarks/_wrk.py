"""Running wrk and reading what it prints: rate, latency, errors, and (on demand) status codes.

wrk counts a response as an error ("Non-2xx or 3xx responses") when its status is >= 400, and
reports socket errors apart: connect, read (the connection failed or was closed while reading),
write, and timeout. A "timeout" is a response that came, but later than --timeout: it is also
counted in the requests, and its latency is left out of the percentiles (so p99 only covers the
responses within the timeout). `status_script` adds a Lua
`response` hook that counts every status code and keeps the first body of each: it costs wrk
CPU (each response goes through Lua), so use it for short diagnostic runs, not for rates.
"""

from __future__ import annotations

import re
import resource
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_SOCKET_ERRORS = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"

POST_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
"""

STATUS_HOOK = """
local threads = {}
function setup(thread)
   table.insert(threads, thread)
end
function init(args)
   statuses = {}
   bodies = {}
   served = {}
end
function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status >= 300 then
      local by = headers["x-served-by"] or headers["X-Served-By"] or "-"
      served[status .. " " .. by] = (served[status .. " " .. by] or 0) + 1
      if bodies[status] == nil then
         bodies[status] = string.sub(body or "", 1, 300)
      end
   end
end
function done(summary, latency, requests)
   local counts, seen, firsts = {}, {}, {}
   for _, t in ipairs(threads) do
      for k, v in pairs(t:get("statuses")) do counts[k] = (counts[k] or 0) + v end
      for k, v in pairs(t:get("served")) do seen[k] = (seen[k] or 0) + v end
      for k, v in pairs(t:get("bodies")) do firsts[k] = firsts[k] or v end
   end
   for k, v in pairs(counts) do io.write(string.format("STATUS %d %d\\n", k, v)) end
   for k, v in pairs(seen) do io.write(string.format("SERVED %s %d\\n", k, v)) end
   for k, v in pairs(firsts) do
      io.write(string.format("BODY %d %s\\n", k, (string.gsub(v, "\\n", " "))))
   end
end
"""


@dataclass
class WrkResult:
    """What one wrk run printed."""

    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    cpu_seconds: float = 0.0
    """wrk's own CPU time (user + system), to tell whether wrk itself was the bottleneck."""
    statuses: dict[int, int] = field(default_factory=dict)
    served_by: dict[str, int] = field(default_factory=dict)
    """"<status> <X-Served-By or ->" -> count, for statuses >= 300 (with the status hook)."""
    bodies: dict[int, str] = field(default_factory=dict)
    """The first body seen of each status >= 300 (with the status hook)."""
    output: str = ""

    @property
    def socket_error_count(self) -> int:
        return sum(self.socket_errors.values())

    @property
    def non_2xx_share(self) -> float:
        """Responses >= 400 over responses."""
        return self.non_2xx / self.requests if self.requests else 0.0

    @property
    def failed_share(self) -> float:
        """(responses >= 400 + socket errors) over (responses + connect/read/write errors).

        Timeouts are responses (too slow ones), already in `requests`; the other socket errors
        are attempts that got no response.
        """
        failed = self.non_2xx + self.socket_error_count
        lost = self.socket_error_count - self.socket_errors["timeout"]
        return failed / (self.requests + lost) if failed else 0.0

    def socket_errors_text(self) -> str:
        e = self.socket_errors
        return f"{e['connect']}/{e['read']}/{e['write']}/{e['timeout']}"


def millis(text: str) -> float:
    """A wrk latency ("812.00us", "1.25ms", "2.00s") in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk latency: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse(out: str) -> WrkResult:
    """Read wrk's output (run with --latency)."""
    if "Requests/sec" not in out or "Latency Distribution" not in out:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if done is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if rps is None or p50 is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(_SOCKET_ERRORS, out)
    names = ("connect", "read", "write", "timeout")
    result = WrkResult(
        requests=int(done.group(1)),
        seconds=millis(done.group(2) + done.group(3)) / 1000,
        requests_per_second=float(rps.group(1)),
        p50_ms=millis(p50.group(1)),
        p99_ms=millis(p99.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(zip(names, map(int, sockets.groups()), strict=True))
        if sockets
        else dict.fromkeys(names, 0),
        output=out,
    )
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "STATUS":
            status, count = rest.split()
            result.statuses[int(status)] = int(count)
        elif kind == "SERVED":
            key, _, count = rest.rpartition(" ")
            result.served_by[key] = int(count)
        elif kind == "BODY":
            status, _, body = rest.partition(" ")
            result.bodies[int(status)] = body
    return result


def run(
    url: str,
    *,
    body: bytes,
    seconds: float,
    connections: int,
    threads: int = 2,
    timeout: float = 2.0,
    statuses: bool = False,
) -> WrkResult:
    """POST `body` to `url` with `wrk -tT -cC -dS --latency` (keep-alive; https works too).

    `statuses` adds the Lua hook that counts status codes (slower: for diagnosis only).
    """
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(POST_SCRIPT.format(body=body_file) + (STATUS_HOOK if statuses else ""))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s",
             f"--timeout={timeout:g}s", "--latency", "-s", str(script), url],
            capture_output=True, text=True, check=False, timeout=seconds + 60,
        )  # fmt: skip
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = parse(done.stdout)
    result.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result
