"""Where instances may be registered (issue 15, item 13: SSRF defaults), with real registration
calls to the whole load balancer over loopback sockets.

Host names are resolved by a patched `socket.getaddrinfo` (for the `.test` names only), so a
test can make a name point somewhere else after registration, as DNS rebinding would.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import httpx
import pytest

from aygolog.settings import DEFAULT_REGISTRATION_NETWORKS, LoadBalancerSettings
from lb_support import AUTH, TOKEN, TinyInstance, serving, wait_for


class FakeDNS:
    """Answers for `*.test` names; every other name goes to the real resolver."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.lookups: list[str] = []

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and name.endswith(".test"):
            self.lookups.append(name)
            if name not in self.names:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            address = self.names[name]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr: tuple[Any, ...] = (address, port or 0)
            if family == socket.AF_INET6:
                sockaddr = (address, port or 0, 0, 0)
            return [(family, socket.SOCK_STREAM, 6, "", sockaddr)]
        return _real_getaddrinfo(host, port, *args, **kwargs)


_real_getaddrinfo = socket.getaddrinfo


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


def test_the_default_is_the_private_and_loopback_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AYGOLOG_REGISTRATION_TOKEN", TOKEN)
    networks = LoadBalancerSettings().registration_allowed_networks
    assert networks == [ipaddress.ip_network(n) for n in DEFAULT_REGISTRATION_NETWORKS]
    assert [str(n) for n in networks] == [
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7"
    ]  # fmt: skip
    # An empty variable or list is the default, not "anything".
    monkeypatch.setenv("AYGOLOG_REGISTRATION_ALLOWED_NETWORKS", "")
    assert LoadBalancerSettings().registration_allowed_networks == networks
    assert LoadBalancerSettings(registration_allowed_networks=[]).registration_allowed_networks == (
        networks
    )


NEVER = [
    ("169.254.169.254", "link-local"),  # the cloud metadata service
    ("169.254.1.1", "link-local"),
    ("[fe80::1]", "link-local"),
    ("[::ffff:169.254.169.254]", "link-local"),  # the same, IPv4-mapped
    ("[fd00:ec2::254]", "EC2 instance metadata"),  # inside fc00::/7, refused all the same
    ("0.0.0.0", "unspecified"),
    ("[::]", "unspecified"),
    ("255.255.255.255", "broadcast"),
    ("224.0.0.1", "multicast"),
    ("[ff02::1]", "multicast"),
]


async def register(c: httpx.AsyncClient, name: str, url: str) -> httpx.Response:
    return await c.post("/api/registration", json={"name": name, "url": url}, headers=AUTH)


async def test_by_default_only_private_and_loopback_hosts_may_be_registered() -> None:
    async with serving() as (url, _app), httpx.AsyncClient(base_url=url) as c:
        for k, (host, reason) in enumerate(NEVER):
            response = await register(c, f"never-{k}", f"http://{host}:8080")
            assert response.status_code == 403, (host, response.text)
            assert reason in response.json()["error"], response.text
        for k, host in enumerate(["8.8.8.8", "1.1.1.1", "[2001:4860:4860::8888]", "100.64.0.1"]):
            response = await register(c, f"public-{k}", f"http://{host}:8080")
            assert response.status_code == 403, (host, response.text)
            assert "outside the networks allowed to register" in response.json()["error"]
        inside = ["10.1.2.3", "172.31.5.6", "192.168.0.9", "127.0.0.1", "[::1]", "[fd12::1]"]
        for k, host in enumerate(inside):
            response = await register(c, f"private-{k}", f"http://{host}:8080")
            assert response.status_code == 201, (host, response.text)
            assert response.json()["ip"] == host.strip("[]")
        listed = (await c.get("/api/registration/services")).json()
        assert sorted(s["name"] for s in listed) == [f"private-{k}" for k in range(6)]


async def test_metadata_and_link_local_are_refused_even_when_any_network_is_allowed(
    dns: FakeDNS,
) -> None:
    dns.names["metadata.test"] = "169.254.169.254"
    dns.names["public.test"] = "203.0.113.7"
    allow_any = "0.0.0.0/0, ::/0"
    async with (
        serving(registration_allowed_networks=allow_any) as (url, _app),
        httpx.AsyncClient(base_url=url) as c,
    ):
        for k, (host, reason) in enumerate(NEVER):
            response = await register(c, f"never-{k}", f"http://{host}:8080")
            assert response.status_code == 403, (host, response.text)
            assert reason in response.json()["error"]
        by_name = await register(c, "by-name", "http://metadata.test:80")
        assert by_name.status_code == 403
        assert by_name.json()["error"] == (
            "url: 'metadata.test' (169.254.169.254) is a link-local address (cloud metadata"
            " services live there): never allowed"
        )
        assert (await register(c, "public", "http://8.8.8.8:8080")).status_code == 201
        public = await register(c, "public-name", "http://public.test:8080")
        assert public.status_code == 201, public.text
        assert public.json()["ip"] == "203.0.113.7"


async def test_an_unresolvable_name_is_403_naming_it(dns: FakeDNS) -> None:
    async with serving() as (url, _app), httpx.AsyncClient(base_url=url) as c:
        response = await register(c, "nowhere", "http://nowhere.test:8080")
        assert response.status_code == 403
        assert response.json()["error"].startswith("url: cannot resolve 'nowhere.test'")


async def test_the_address_checked_at_registration_is_where_the_lb_connects(
    dns: FakeDNS,
) -> None:
    # DNS rebinding: the name resolves inside when registered, elsewhere afterwards. Nothing
    # listens on 127.0.0.2 (the instance is bound to 127.0.0.1): connecting by name would fail.
    inst = await TinyInstance("api-1").start()
    dns.names["api.test"] = "127.0.0.1"
    try:
        async with serving() as (url, _app), httpx.AsyncClient(base_url=url, timeout=5) as c:
            response = await register(c, "api-1", f"http://api.test:{inst.port}")
            assert response.status_code == 201, response.text
            assert response.json()["ip"] == "127.0.0.1"
            dns.names["api.test"] = "127.0.0.2"
            lookups = len(dns.lookups)

            async def probed(times: int) -> bool:
                return len(inst.probe_hosts) >= times

            await wait_for(lambda: probed(5))  # health probes every 50 ms
            (listed,) = (await c.get("/api/registration/services")).json()
            assert listed["status"] == "healthy"
            assert listed["url"] == f"http://api.test:{inst.port}"  # the name, for people
            assert listed["ip"] == "127.0.0.1"  # the address, for connections
            assert set(inst.probe_hosts) == {f"api.test:{inst.port}"}  # Host: the name
            for _ in range(3):
                answer = await c.get("/api/log")
                assert answer.status_code == 200, answer.text
                assert answer.headers["X-Served-By"] == "api-1"
            assert inst.served == 3
            await asyncio.sleep(0.2)
            assert len(dns.lookups) == lookups  # the name was not resolved again
    finally:
        await inst.close()


async def test_the_instance_cannot_choose_its_ip(dns: FakeDNS) -> None:
    # `ip` in the registration body is replaced by the address the load balancer checked.
    async with serving() as (url, _app), httpx.AsyncClient(base_url=url) as c:
        body = {"name": "sly", "url": "http://127.0.0.1:8080", "ip": "169.254.169.254"}
        response = await c.post("/api/registration", json=body, headers=AUTH)
        assert response.status_code == 201
        assert response.json()["ip"] == "127.0.0.1"
