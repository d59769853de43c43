"""The aygolog load balancer against nginx, in front of the same 3 Log API instances.

    .venv/bin/python benchmarks/lb_vs_nginx.py [--seconds 10] [--connections 32]

Needs `wrk` and `nginx` (Debian packages). Starts a private Redis-compatible server, an
`aygolog lb`, 3 `aygolog api` instances registered with it, and an nginx (round robin, upstream
keep-alive) over the same 3 instances; then POSTs one small log per request with
`wrk -t2 -cN --latency` through (a) nginx, (b) the aygolog LB, (c) one instance directly.
The bar (issue 4): the LB >= 0.6x nginx's requests/s, and p99 <= 2x nginx's p99.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from _common import redis_target
from aygolog.embedded import free_port
from log_api import wrk
from support import ServiceProcess

TOKEN = "bench-token"
NGINX_CONF = """
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream logapi {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://logapi;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_nginx(tmp: Path, port: int, upstreams: list[int]) -> subprocess.Popen[bytes]:
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstreams)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, servers=servers))
    process = subprocess.Popen(
        ["nginx", "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("nginx did not start: " + (tmp / "error.log").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    if shutil.which("nginx") is None or shutil.which("wrk") is None:
        sys.exit("needs nginx and wrk: apt-get install nginx-light wrk")
    body = msgspec.json.encode(
        {"message": "GET /api/items/42 handled in 12 ms", "level": "info", "service": "web",
         "attributes": {"status": 200}}
    )  # fmt: skip
    rows = []
    with redis_target(args.redis_url) as redis_url, tempfile.TemporaryDirectory() as tmp_dir:
        lb_port = free_port()
        common = {"AYGOLOG_REDIS_URL": redis_url, "AYGOLOG_REDIS_PREFIX": "lbbench",
                  "AYGOLOG_REGISTRATION_TOKEN": TOKEN}  # fmt: skip
        lb = ServiceProcess("lb", env=common, port=lb_port).start()
        apis = [
            ServiceProcess(
                "api",
                env={
                    **common,
                    "AYGOLOG_INSTANCE_NAME": f"api-{i}",
                    "AYGOLOG_LB_URL": f"http://127.0.0.1:{lb_port}",
                },
            ).start()
            for i in range(3)
        ]
        nginx = None
        try:
            deadline = time.monotonic() + 15
            while len(httpx.get(lb.url + "/api/registration/services").json()) < 3:
                if time.monotonic() > deadline:
                    raise RuntimeError("the instances did not register")
                time.sleep(0.1)
            nginx_port = free_port()
            nginx = start_nginx(Path(tmp_dir), nginx_port, [a.port for a in apis])
            targets = [
                ("nginx 1.22, round robin, upstream keep-alive", f"http://127.0.0.1:{nginx_port}"),
                ("aygolog LB (p2c)", lb.url),
                ("one instance directly", apis[0].url),
            ]
            for name, base in targets:
                rate, p50, p99 = wrk(base + "/api/log", body, args.seconds, args.connections)
                rows.append((name, rate, p50, p99))
                print(f"{name}: {rate:,.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait()
            for api in apis:
                api.close()
            lb.close()
    nginx_rate, nginx_p99 = rows[0][1], rows[0][3]
    print()
    print(f"| POST /api/log, wrk -t2 -c{args.connections}, {args.seconds:g} s | requests/s "
          "| vs nginx | p50 ms | p99 ms | p99 vs nginx |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name, rate, p50, p99 in rows:
        print(f"| {name} | {rate:,.0f} | {rate / nginx_rate:.2f} | {p50:.2f} | {p99:.2f} "
              f"| {p99 / nginx_p99:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
