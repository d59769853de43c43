"""The Log API's registration agent against a real HTTP registration endpoint on loopback.

The endpoint is a minimal stand-in for the load balancer's registration API (a Litestar app
served by uvicorn in this test's event loop): it records calls and can forget the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import uvicorn
from litestar import Litestar, Request, Response, delete, post, put
from litestar.params import FromPath

from aygolog.embedded import free_port
from aygolog.models import Registration
from aygolog.server.agent import RegistrationAgent


@dataclass
class FakeLB:
    known: set[str] = field(default_factory=set)
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    refuse_token: bool = False

    def app(self) -> Litestar:
        @post("/api/registration", status_code=201)
        async def register(request: Request[Any, Any, Any]) -> Response[bytes]:
            token = request.headers.get("authorization")
            self.calls.append(("register", "", token))
            if self.refuse_token:
                return Response(b'{"error": "bad token"}', status_code=401)
            body = msgspec.json.decode(await request.body(), type=Registration)
            self.known.add(body.name)
            return Response(msgspec.json.encode(body), status_code=201)

        @put("/api/registration/{name:str}/heartbeat")
        async def heartbeat(
            name: FromPath[str], request: Request[Any, Any, Any]
        ) -> Response[bytes]:
            self.calls.append(("heartbeat", name, request.headers.get("authorization")))
            if name not in self.known:
                return Response(b'{"error": "unknown"}', status_code=404)
            return Response(b"{}", status_code=200)

        @delete("/api/registration/{name:str}", status_code=204)
        async def deregister(name: FromPath[str]) -> None:
            self.calls.append(("deregister", name, None))
            self.known.discard(name)

        return Litestar([register, heartbeat, deregister])

    def count(self, kind: str) -> int:
        return sum(1 for call in self.calls if call[0] == kind)


@contextlib.asynccontextmanager
async def serve(lb: FakeLB, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(lb.app(), host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def wait_until(condition: object, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.02)


def agent(port: int, **kwargs: object) -> RegistrationAgent:
    return RegistrationAgent(
        lb_url=f"http://127.0.0.1:{port}",
        registration=Registration(name="api-1", url="http://127.0.0.1:9999"),
        token="s3cret",
        interval=0.1,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_registers_heartbeats_and_deregisters() -> None:
    lb, port = FakeLB(), free_port()
    async with serve(lb, port):
        a = agent(port)
        await a.start()
        await wait_until(lambda: lb.count("heartbeat") >= 3)
        assert "api-1" in lb.known
        assert {token for _, _, token in lb.calls if token} == {"Bearer s3cret"}
        assert a.report["state"] == "registered"
        await a.stop()
        assert lb.calls[-1] == ("deregister", "api-1", None)
        assert "api-1" not in lb.known


async def test_retries_until_the_lb_is_up() -> None:
    lb, port = FakeLB(), free_port()
    a = agent(port)
    await a.start()  # nothing listens yet: the agent keeps trying, without raising
    await asyncio.sleep(0.6)
    assert a.report["state"] == "retrying"
    assert "unreachable" in a.report["error"]
    async with serve(lb, port):
        await wait_until(lambda: "api-1" in lb.known)
        await a.stop()


async def test_registers_again_when_the_lb_forgets() -> None:
    lb, port = FakeLB(), free_port()
    async with serve(lb, port):
        a = agent(port)
        await a.start()
        await wait_until(lambda: "api-1" in lb.known)
        lb.known.clear()  # as after an LB restart without shared state
        await wait_until(lambda: "api-1" in lb.known)
        assert lb.count("register") == 2
        await a.stop()


async def test_refused_token_is_reported_and_retried() -> None:
    lb, port = FakeLB(refuse_token=True), free_port()
    async with serve(lb, port):
        a = agent(port)
        await a.start()
        await wait_until(lambda: lb.count("register") >= 2)
        assert "401" in a.report["error"]
        assert not a.registered.is_set()
        await a.stop()
        assert lb.count("deregister") == 0
