"""`aygolog.redis`: address parsing, key naming, and real connections through `create_redis`."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import AuthenticationError, RedisClusterException, ResponseError

from aygolog.embedded import find_server_binary
from aygolog.redis import KeySpace, RedisTarget, create_redis, create_sync_redis, parse_redis_url

PASSWORD = "s3cret-pw"


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "url"),
    [
        # the seed's form
        ("10.0.0.5:6379", "redis://10.0.0.5:6379/0"),
        ("  redis  ", "redis://redis:6379/0"),
        ("my-redis.internal:6380", "redis://my-redis.internal:6380/0"),
        ("[::1]:6379", "redis://[::1]:6379/0"),
        ("[::1]", "redis://[::1]:6379/0"),
        ("::1", "redis://[::1]:6379/0"),
        # URLs
        ("redis://localhost", "redis://localhost:6379/0"),
        ("REDIS://h:1/2", "redis://h:1/2"),
        ("redis://h:1?db=3", "redis://h:1/3"),
        ("redis://:pw@h:1/0", "redis://:pw@h:1/0"),
        ("redis://user:p%40ss%2Fw@h:1/0", "redis://user:p%40ss%2Fw@h:1/0"),
        ("redis://user@h", "redis://user@h:6379/0"),
        ("rediss://h:6380/0", "rediss://h:6380/0"),
        ("rediss://h?ssl_cert_reqs=none", "rediss://h:6379/0?ssl_cert_reqs=none"),
        ("redis://h?socket_timeout=10&protocol=3", "redis://h:6379/0?socket_timeout=10&protocol=3"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock?db=0"),
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2"),
        ("unix://:pw@/run/redis.sock", "unix://:pw@/run/redis.sock?db=0"),
        ("unix:///run/redis.sock?password=pw", "unix://:pw@/run/redis.sock?db=0"),
        ("redis+sentinel://s1:26379,s2/mymaster", "redis+sentinel://s1:26379,s2:26379/mymaster/0"),
        ("redis+sentinel://:pw@s1/mymaster/4", "redis+sentinel://:pw@s1:26379/mymaster/4"),
        # .NET StackExchange.Redis strings
        ("h:6380,password=pw,ssl=True,abortConnect=False", "rediss://:pw@h:6380/0"),
        ("h,defaultDatabase=5,user=app,password=pw", "redis://app:pw@h:6379/5"),
        ("s1:26380,s2,serviceName=mymaster", "redis+sentinel://s1:26380,s2:26379/mymaster/0"),
    ],
)
def test_parse_valid(address: str, url: str) -> None:
    target = parse_redis_url(address)
    assert target.url == url
    assert parse_redis_url(target.url) == target  # the normal form parses back to the same


def test_parse_fields() -> None:
    target = parse_redis_url("redis+sentinel://u:p@a:1,[::1]:2/master/3")
    assert target == RedisTarget(
        scheme="redis+sentinel",
        hosts=(("a", 1), ("::1", 2)),
        db=3,
        username="u",
        password="p",
        service_name="master",
    )
    unix = parse_redis_url("unix:///tmp/r.sock?db=1")
    assert (unix.scheme, unix.path, unix.db, unix.hosts) == ("unix", "/tmp/r.sock", 1, ())


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("not a url:xx", "'not a url' is not a host name"),
        ("host:xx", "port 'xx' is not a number"),
        ("host:0", "port '0'"),
        ("host:70000", "port '70000'"),
        ("http://host:6379", "unsupported scheme 'http'"),
        ("redis://", "no host"),
        ("redis://h:1/x", "database 'x' is not a number"),
        ("redis://h:1/0/1", "unexpected path"),
        ("redis://h/1?db=2", "two databases"),
        ("redis://a:1,b:2/0", "only a redis+sentinel:// URL lists several hosts"),
        ("redis://h?foo=1", "unknown option 'foo'"),
        ("redis://h?ssl_cert_reqs=none", "unknown option 'ssl_cert_reqs'"),
        ("redis://h#frag", "fragment"),
        ("unix://", "no socket path"),
        ("unix://relative.sock", "has no host"),
        ("unix:///", "no socket path"),
        ("redis+sentinel://s1", "master_name"),
        ("redis+sentinel://s1/m?protocol=3", "takes no options"),
        ("[::1", "IPv6"),
        ("1:2:3", "IPv6 address in brackets"),
        ("user:pw@host:6379", "credentials need a URL"),
        ("a:1,b:2", "2 endpoints"),
        ("h,foo=bar", "unknown option 'foo'"),
        ("h,ssl=maybe", "neither true nor false"),
        ("h,serviceName=m,ssl=true", "Sentinel is not supported"),
        (",password=pw", "no host"),
    ],
)
def test_parse_invalid(address: str, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid Redis address") as info:
        parse_redis_url(address)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "address",
    ["redis://:s3cret@h:xx", "redis://u:s3cret@h/x", "u:s3cret@h", "h:xx,password=s3cret"],
)
def test_errors_and_repr_hide_the_password(address: str) -> None:
    with pytest.raises(ValueError, match="invalid Redis address") as info:
        parse_redis_url(address)
    assert "s3cret" not in str(info.value)
    target = parse_redis_url("redis://u:s3cret@h:1/0")
    assert "s3cret" not in repr(target)
    assert target.redacted_url == "redis://u:***@h:1/0"


# --- KeySpace -----------------------------------------------------------------------------------


def test_keyspace_names_keys_with_a_hash_tag() -> None:
    assert KeySpace().key("logs") == "{aygolog}:logs"
    assert KeySpace("aygolog").key("logs") == "{aygolog}:logs"
    assert KeySpace("t1").key("idem", "k-1") == "{t1}:idem:k-1"
    assert KeySpace("team:app").tag == "{team:app}"


@pytest.mark.parametrize("prefix", ["", "a b", "a{b", "a}b", "tab\t", "a*", "a?", "x" * 101, "é"])
def test_keyspace_refuses_bad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError, match="key prefix"):
        KeySpace(prefix)


def test_keyspace_is_a_value() -> None:
    keys = KeySpace("p")
    assert keys == KeySpace("p")
    assert hash(keys) == hash(KeySpace("p"))
    with pytest.raises(AttributeError):
        keys.prefix = "q"  # type: ignore[misc]
    with pytest.raises(ValueError, match="empty"):
        keys.key("")


# --- real servers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    port: int
    """Plain TCP, no password."""
    socket: str
    """A unix socket of a server with TCP switched off."""
    auth_port: int
    """TCP with `--requirepass PASSWORD`."""
    cluster_port: int
    """A one-node Redis Cluster that owns every slot."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(proc: subprocess.Popen[bytes], address: str | tuple[str, int], log: Path) -> None:
    """Until the server answers (a NOAUTH error is an answer too)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            with socket.socket(family) as sock:
                sock.settimeout(0.5)
                sock.connect(address)
                sock.sendall(b"PING\r\n")
                if sock.recv(64):
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"server did not start: {log.read_text()}")


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """Four private servers, started together, stopped at the end of the module."""
    binary = find_server_binary()
    workdir = Path(tempfile.mkdtemp(prefix="aygolog-rf-", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        home = workdir / name
        home.mkdir()
        log = home / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [binary, "--save", "", "--appendonly", "no", "--dir", str(home), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return proc, log

    try:
        port, auth_port, cluster_port = _free_port(), _free_port(), _free_port()
        sock = str(workdir / "redis.sock")
        plain = start("plain", "--port", str(port), "--bind", "127.0.0.1")
        unix = start("unix", "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700")
        auth = start(
            "auth", "--port", str(auth_port), "--bind", "127.0.0.1", "--requirepass", PASSWORD
        )
        # The bus port is given too: the default, port + 10000, may be taken or above 65535.
        cluster = start(
            "cluster",
            *("--port", str(cluster_port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"),
            *("--cluster-port", str(_free_port())),
        )
        _wait_ready(plain[0], ("127.0.0.1", port), plain[1])
        _wait_ready(unix[0], sock, unix[1])
        _wait_ready(auth[0], ("127.0.0.1", auth_port), auth[1])
        _wait_ready(cluster[0], ("127.0.0.1", cluster_port), cluster[1])
        with redis.Redis(port=cluster_port) as admin:
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + 5
            while b"cluster_state:ok" not in admin.execute_command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the one-node cluster did not come up")
                time.sleep(0.02)
        yield Servers(port=port, socket=sock, auth_port=auth_port, cluster_port=cluster_port)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_seed_address_ping_set_get(servers: Servers) -> None:
    client = create_redis(f"127.0.0.1:{servers.port}")
    try:
        assert isinstance(client, aioredis.Redis)
        assert await client.ping() is True
        await client.set("rf:seed", "v1")
        assert await client.get("rf:seed") == b"v1"
    finally:
        await client.aclose()


async def test_url_with_database_and_decoded_replies(servers: Servers) -> None:
    db5 = create_redis(f"redis://127.0.0.1:{servers.port}/5", decode_responses=True)
    db0 = create_redis(f"redis://127.0.0.1:{servers.port}/0")
    try:
        await db5.set("rf:db", "five")
        assert await db5.get("rf:db") == "five"
        assert await db0.get("rf:db") is None
    finally:
        await db5.aclose()
        await db0.aclose()


async def test_unix_socket(servers: Servers) -> None:
    client = create_redis(f"unix://{servers.socket}?db=1")
    try:
        assert await client.ping() is True
        await client.set("rf:unix", "u")
        assert await client.get("rf:unix") == b"u"
        info = await client.info("server")
        assert info["tcp_port"] == 0  # really over the socket: this server has no TCP port
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "address",
    [
        "redis://:{pw}@127.0.0.1:{port}/0",
        "redis://default:{pw}@127.0.0.1:{port}",
        "127.0.0.1:{port},password={pw},abortConnect=false",
    ],
)
async def test_password(servers: Servers, address: str) -> None:
    client = create_redis(address.format(pw=PASSWORD, port=servers.auth_port))
    try:
        assert await client.ping() is True
        await client.set("rf:auth", "ok")
        assert await client.get("rf:auth") == b"ok"
    finally:
        await client.aclose()


@pytest.mark.parametrize("address", ["redis://:wrong@127.0.0.1:{port}", "127.0.0.1:{port}"])
async def test_wrong_or_missing_password_is_an_auth_error(servers: Servers, address: str) -> None:
    client = create_redis(address.format(port=servers.auth_port))
    try:
        with pytest.raises(AuthenticationError):
            await client.ping()
    finally:
        await client.aclose()


async def test_cluster_client_and_hash_tags(servers: Servers) -> None:
    """Keys of one KeySpace share a slot, so one script may touch them all on a cluster."""
    client = create_redis(f"redis://127.0.0.1:{servers.cluster_port}", cluster=True)
    keys = KeySpace("rf")
    script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"
    try:
        assert isinstance(client, aioredis.RedisCluster)
        assert await client.ping() is True
        assert await client.eval(script, 2, keys.key("a"), keys.key("n"), "x") == 1
        assert await client.get(keys.key("a")) == b"x"
        with pytest.raises((ResponseError, RedisClusterException), match="slot"):
            # the same two keys without the tag land in different slots
            await client.eval(script, 2, "rf:a", "rf:n", "x")
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("address", "reason"),
    [("unix:///tmp/x.sock", "redis:// or rediss://"), ("redis://h:1/3", "only database 0")],
)
def test_cluster_needs_tcp_and_database_0(address: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        create_redis(address, cluster=True)
    with pytest.raises(ValueError, match=reason):
        create_sync_redis(address, cluster=True)


def test_sync_client(servers: Servers) -> None:
    with create_sync_redis(f"127.0.0.1:{servers.port}", decode_responses=True) as client:
        assert isinstance(client, redis.Redis)
        assert client.ping() is True
        client.set("rf:sync", "s")
        assert client.get("rf:sync") == "s"
    with create_sync_redis(f"127.0.0.1:{servers.cluster_port}", cluster=True) as cluster:
        assert isinstance(cluster, redis.RedisCluster)
        assert cluster.ping() is True


async def test_redis_down_fails_fast() -> None:
    """A refused connection surfaces within a second (one retry), not after redis-py's ten."""
    client = create_redis(f"127.0.0.1:{_free_port()}")
    started = time.monotonic()
    try:
        with pytest.raises(redis.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()
    assert time.monotonic() - started < 1.0


async def test_sentinel_address_makes_a_master_client() -> None:
    """No sentinel runs here: the client is built, and asks the (absent) sentinels on use."""
    client = create_redis(f"redis+sentinel://127.0.0.1:{_free_port()}/mymaster")
    try:
        assert isinstance(client, aioredis.Redis)
        with pytest.raises(MasterNotFoundError, match="mymaster"):
            await client.ping()
    finally:
        await client.aclose()
    sync_client = create_sync_redis(f"127.0.0.1:{_free_port()},serviceName=mymaster")
    assert isinstance(sync_client, redis.Redis)
    sync_client.close()


# --- the services' pool: bounded, and it waits ---------------------------------------------------


async def test_a_burst_above_the_pool_size_waits_for_connections(servers: Servers) -> None:
    """150 commands at once through the services' client (100 connections by default): they
    queue for a connection; redis-py's default pool answered "Too many connections" (a 503)."""
    from aygolog.redis import redis_from_settings
    from aygolog.settings import RedisSettings

    client = redis_from_settings(RedisSettings(url=f"127.0.0.1:{servers.port}"))
    try:
        # BLPOP on an empty list holds its connection for its timeout, as a slow command would.
        replies = await asyncio.gather(
            *(client.blpop([f"rf:empty:{n}"], timeout=0.3) for n in range(150))
        )
        assert replies == [None] * 150
        assert client.connection_pool.max_connections == 100
    finally:
        await client.aclose()


async def test_the_pool_wait_is_bounded(servers: Servers) -> None:
    from aygolog.redis import redis_from_settings
    from aygolog.settings import RedisSettings

    settings = RedisSettings(url=f"127.0.0.1:{servers.port}", max_connections=1, pool_timeout=0.2)
    client = redis_from_settings(settings)
    try:

        async def hold() -> object:
            return await client.blpop(["rf:empty:hold"], timeout=1)

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.1)  # the only connection is taken
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            await client.ping()
        assert 0.15 < time.monotonic() - started < 0.9
        assert await holder is None
        assert await client.ping() is True  # free again
    finally:
        await client.aclose()
