"""The LB's data plane in a real `aygolog lb` in front of a real `aygolog api` (one Redis).

Issue 16 (3): a client leaving a live tail makes the LB close its connection to the instance
within a second. Issue 15 (12): CORS works with no setting on the log routes, and only there.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from aygolog.embedded import EmbeddedRedis
from support import ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(90)

TOKEN = "live-proxy-token"
ORIGIN = "http://localhost:5173"  # where the seed's React page is served from (Vite)


@dataclass
class Pair:
    lb: ServiceProcess
    api: ServiceProcess
    lb_env: dict[str, str]


@pytest.fixture(scope="module")
def pair(redis_server: EmbeddedRedis) -> Iterator[Pair]:
    prefix = f"lp{uuid.uuid4().hex[:8]}"
    common = {"AYGOLOG_REDIS_URL": redis_server.url, "AYGOLOG_REDIS_PREFIX": prefix}
    lb_env = {**common, "AYGOLOG_REGISTRATION_TOKEN": TOKEN}
    lb = ServiceProcess("lb", env=lb_env).start()
    api = ServiceProcess(
        "api",
        env={
            **common,
            "AYGOLOG_LB_URL": lb.url,
            "AYGOLOG_REGISTRATION_TOKEN": TOKEN,
            "AYGOLOG_HEARTBEAT_INTERVAL": "0.5",
            "AYGOLOG_INSTANCE_NAME": "live-api",
        },
    )
    try:
        api.start(timeout=30)

        def registered() -> bool:
            listed = httpx.get(lb.url + "/api/registration/services", timeout=1).json()
            return any(s["status"] == "healthy" for s in listed)

        assert wait_until(registered, 20)
        yield Pair(lb, api, lb_env)
    finally:
        api.close()
        lb.close()


def _upstream_ports(pair: Pair) -> set[int]:
    """Local ports of the LB process's established TCP connections to the instance (Linux)."""
    assert pair.lb.process is not None
    fds = Path(f"/proc/{pair.lb.process.pid}/fd")
    inodes = set()
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if (
                state == "01"
                and inode in inodes
                and int(remote.rsplit(":", 1)[1], 16) == (pair.api.port)
            ):
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def test_leaving_a_live_tail_closes_the_instance_connection_within_a_second(pair: Pair) -> None:
    before = _upstream_ports(pair)
    with socket.create_connection(("127.0.0.1", pair.lb.port), timeout=5) as client:
        client.sendall(
            b"GET /api/logs/stream HTTP/1.1\r\nHost: lb\r\nAccept: text/event-stream\r\n\r\n"
        )
        received = b""
        while b": connected" not in received:  # the instance's first comment, then quiet
            chunk = client.recv(65536)
            assert chunk, received
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 "), received
        assert wait_until(lambda: bool(_upstream_ports(pair) - before), 5)
        stream = _upstream_ports(pair) - before
        # The client goes away while the stream is quiet (the next keep-alive is 15 s away).
    left = time.monotonic()
    assert wait_until(lambda: not (_upstream_ports(pair) & stream), 1.0, step=0.02), (
        "the LB kept its connection to the instance"
    )
    assert time.monotonic() - left < 1.0
    # The LB is fine afterwards.
    assert httpx.get(pair.lb.url + "/api/log", timeout=5).status_code == 200


def test_cors_with_no_setting_on_the_log_routes_only(pair: Pair) -> None:
    with httpx.Client(base_url=pair.lb.url, timeout=5) as client:
        preflight = client.options(
            "/api/log",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert preflight.headers["access-control-allow-headers"] == "content-type"
        written = client.post(
            "/api/log", json={"name": "from the seed page"}, headers={"Origin": ORIGIN}
        )
        assert written.status_code == 201, written.text
        assert written.headers.get_list("access-control-allow-origin") == ["*"]
        listed = client.get("/api/log", headers={"Origin": ORIGIN})
        assert listed.status_code == 200
        assert listed.headers.get_list("access-control-allow-origin") == ["*"]
        assert len(listed.headers.get_list("vary")) <= 1
        # The registration API and the control plane: never exposed.
        for path in ("/api/registration/services", "/api/registration", "/health", "/metrics"):
            refused = client.options(
                path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
            )
            assert refused.status_code == 403, path
            assert "access-control-allow-origin" not in refused.headers
        services = client.get("/api/registration/services", headers={"Origin": ORIGIN})
        assert services.status_code == 200
        assert "access-control-allow-origin" not in services.headers


def test_cors_can_be_turned_off(pair: Pair) -> None:
    lb = ServiceProcess("lb", env={**pair.lb_env, "AYGOLOG_CORS_ORIGINS": "none"}).start()
    try:
        listed = httpx.get(lb.url + "/api/registration/services", timeout=5).json()
        assert wait_until(lambda: bool(httpx.get(lb.url + "/api/log", timeout=5).is_success), 10)
        # Preflights go to the instance like any request (it has no CORS either).
        preflight = httpx.options(
            lb.url + "/api/log",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
            timeout=5,
        )
        assert preflight.headers.get("x-served-by") == "live-api", listed
        assert "access-control-allow-origin" not in preflight.headers
        response = httpx.get(lb.url + "/health", headers={"Origin": ORIGIN}, timeout=5)
        assert "access-control-allow-origin" not in response.headers
        preflight = httpx.options(
            lb.url + "/api/registration/services",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
            timeout=5,
        )
        assert "access-control-allow-origin" not in preflight.headers
    finally:
        lb.close()
