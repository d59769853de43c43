"""Loki push: the pure decoder (tables), and the route served in-process (uvicorn on loopback)
over a real Redis: 204 on success, Loki's plain-text errors, refused bodies store nothing."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import cramjam
import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from aygolog.embedded import free_port
from aygolog.ingest.body import BodyError
from aygolog.ingest.loki import decode_push, parse_labels
from aygolog.ingest.loki_push_pb2 import PushRequest
from aygolog.lb.app import proxied
from aygolog.models import LogLevel, LogQuery
from aygolog.store import RedisStreamLogStore
from ingest_support import count, serve

pytestmark = pytest.mark.timeout(60)

PB = "application/x-protobuf"
JS = "application/json"
NOW_NS = int(datetime.now(UTC).timestamp() * 1e9)
PATH = "/loki/api/v1/push"


def json_push(*streams: tuple[dict[str, str], list[list[Any]]]) -> bytes:
    return json.dumps(
        {"streams": [{"stream": labels, "values": values} for labels, values in streams]}
    ).encode()


Entries = list[tuple[int, str, dict[str, str]]]


def snap(raw: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(raw))


def pb_push(*streams: tuple[str, Entries], snappy: bool = True) -> bytes:
    push = PushRequest()
    for labels, entries in streams:
        stream = push.streams.add(labels=labels)
        for ns, line, metadata in entries:
            entry = stream.entries.add(line=line)
            entry.timestamp.seconds, entry.timestamp.nanos = divmod(ns, 1_000_000_000)
            for name, value in metadata.items():
                entry.structuredMetadata.add(name=name, value=value)
    raw = push.SerializeToString()
    return snap(raw) if snappy else raw


# -- the decoder ------------------------------------------------------------------------------


def test_json_and_protobuf_twins_decode_the_same() -> None:
    labels = {"service_name": "checkout", "job": "api", "level": "warn", "env": "prod"}
    values: list[list[Any]] = [
        [str(NOW_NS), "paid"],
        [str(NOW_NS + 1), "declined", {"order": "42"}],
    ]
    from_json = decode_push(json_push((labels, values)), JS, max_bytes=10_000)
    entries: Entries = [(NOW_NS, "paid", {}), (NOW_NS + 1, "declined", {"order": "42"})]
    twin = pb_push(('{service_name="checkout", job="api", level="warn", env="prod"}', entries))
    from_pb = decode_push(twin, PB, max_bytes=10_000)
    assert from_json.logs == from_pb.logs
    first, second = from_json.logs
    assert (first.message, first.level, first.service) == ("paid", LogLevel.WARNING, "checkout")
    assert first.attributes == {"job": "api", "env": "prod"}  # service_name won; job stays
    assert second.attributes == {"job": "api", "env": "prod", "order": "42"}
    assert first.timestamp == datetime.fromtimestamp(NOW_NS // 1000 / 1e6, UTC)


@pytest.mark.parametrize(
    ("labels", "service", "level", "attributes"),
    [
        ({"service": "a", "job": "b", "app": "c"}, "a", LogLevel.INFO, {"job": "b", "app": "c"}),
        ({"job": "b", "app": "c"}, "b", LogLevel.INFO, {"app": "c"}),
        ({"app": "c", "service_name": ""}, "c", LogLevel.INFO, {}),
        ({"detected_level": "ERROR", "severity": "debug"}, None, LogLevel.ERROR,
         {"severity": "debug"}),
        ({"severity": "crit"}, None, LogLevel.CRITICAL, {}),
        ({"level": "loud"}, None, LogLevel.INFO, {"level": "loud"}),  # unknown: kept
        ({"job": "my job!"}, "my_job_", LogLevel.INFO, {"job": "my job!"}),  # fitted, kept
    ],
)  # fmt: skip
def test_label_mapping(
    labels: dict[str, str], service: str | None, level: LogLevel, attributes: dict[str, str]
) -> None:
    (log,) = decode_push(json_push((labels, [[str(NOW_NS), "x"]])), JS, max_bytes=10_000).logs
    assert (log.service, log.level, log.attributes) == (service, level, attributes)


def test_a_refused_entry_is_named_by_stream_and_position() -> None:
    body = json_push(({"a": "1"}, [[str(NOW_NS), "x"]] * 2), ({"a": "2"}, [[str(NOW_NS), "y"]] * 3))
    batch = decode_push(body, JS, max_bytes=10_000)
    assert [batch.place(i) for i in (0, 1, 2, 4)] == [
        "streams[0].values[0]",
        "streams[0].values[1]",
        "streams[1].values[0]",
        "streams[1].values[2]",
    ]
    empty_first = json_push(({"a": "1"}, []), ({"a": "2"}, [[str(NOW_NS), "y"]]))
    assert decode_push(empty_first, JS, max_bytes=10_000).place(0) == "streams[1].values[0]"


def test_labels_string() -> None:
    assert parse_labels('{a="1", b = "x\\"y,}" ,}') == {"a": "1", "b": 'x"y,}'}
    assert parse_labels("{}") == {}
    for bad in ['a="1"', "{a=1}", '{a="1" b="2"}', '{a="\\q"}']:
        with pytest.raises(BodyError):
            parse_labels(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}=",\\ abn_0\n\u00e9', max_size=40))
def test_any_labels_string_parses_or_is_a_400(text: str) -> None:
    status = 200
    try:
        labels = parse_labels(text)
    except BodyError as exc:
        status, labels = exc.status, {}
    assert status in (200, 400)
    assert all(isinstance(v, str) for v in labels.values())


def test_snappy_bomb_is_refused_before_inflating() -> None:
    body = snap(b"\0" * 5_000_000)
    with pytest.raises(BodyError) as caught:
        decode_push(body, PB, max_bytes=100_000)
    assert caught.value.status == 413


_VALID = pb_push(('{job="x"}', [(NOW_NS, "line", {"k": "v"})]), snappy=False)


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=4)).map(
            lambda cut: _VALID[: cut[0] % len(_VALID)] + cut[1] + _VALID[cut[0] % len(_VALID) :]
        ),
    ),
    kind=st.sampled_from([PB, JS, "snappy noise"]),
)
def test_any_body_decodes_or_is_a_body_error(body: bytes, kind: str) -> None:
    if kind == PB:
        body = snap(body)
    statuses = (200, 400, 413) if kind == "snappy noise" else (200, 400)
    status = 200
    try:
        decode_push(body, PB if kind == "snappy noise" else kind, max_bytes=100_000)
    except BodyError as exc:
        status = exc.status
    assert status in statuses


# -- the route, in-process over a real Redis ---------------------------------------------------


async def test_json_push_is_204_and_a_retry_is_stored_once(
    ingest_api: httpx.AsyncClient, redis_store: RedisStreamLogStore
) -> None:
    body = json_push(({"app": "shop"}, [[str(NOW_NS), "one"], [str(NOW_NS + 5), "two"]]))
    answer = await ingest_api.post(PATH, content=body, headers={"Content-Type": JS})
    assert (answer.status_code, answer.content) == (204, b"")
    again = await ingest_api.post(
        PATH, content=gzip.compress(body), headers={"Content-Type": JS, "Content-Encoding": "gzip"}
    )
    assert again.status_code == 204
    page = await redis_store.query(LogQuery(limit=10))
    assert sorted(e.message for e in page.items) == ["one", "two"]
    assert {e.service for e in page.items} == {"shop"}


async def test_protobuf_push_is_stored(
    ingest_api: httpx.AsyncClient, redis_store: RedisStreamLogStore
) -> None:
    body = pb_push(('{job="api", level="error"}', [(NOW_NS, "boom", {"trace_id": "t1"})]))
    answer = await ingest_api.post(PATH, content=body, headers={"Content-Type": PB})
    assert answer.status_code == 204, answer.text
    (entry,) = (await redis_store.query(LogQuery(limit=10))).items
    assert (entry.message, entry.level, entry.service) == ("boom", LogLevel.ERROR, "api")
    assert entry.attributes == {"trace_id": "t1"}


async def test_one_refused_entry_refuses_the_push(
    ingest_api: httpx.AsyncClient, redis_store: RedisStreamLogStore
) -> None:
    future = int((datetime.now(UTC) + timedelta(hours=2)).timestamp() * 1e9)
    body = json_push(({"job": "a"}, [[str(NOW_NS), "fine"], [str(future), "later"]]))
    answer = await ingest_api.post(PATH, content=body, headers={"Content-Type": JS})
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text.startswith("streams[0].values[1]: timestamp")
    assert "nothing stored" in answer.text
    twin = pb_push(('{job="a"}', [(NOW_NS, "fine", {}), (NOW_NS, "fine", {}), (future, "x", {})]))
    answer = await ingest_api.post(PATH, content=twin, headers={"Content-Type": PB})
    assert answer.status_code == 400
    assert answer.text.startswith("streams[0].entries[2]: timestamp")
    assert await count(redis_store) == 0


def _ok_json() -> bytes:
    return json_push(({"job": "a"}, [[str(NOW_NS), "x"]]))


BAD_INPUTS: list[tuple[str, dict[str, str], bytes, int]] = [
    ("bad protobuf", {"Content-Type": PB}, snap(b"\xff\xff\xff"), 400),
    ("protobuf not snappy", {"Content-Type": PB}, pb_push(('{a="b"}', [(NOW_NS, "x", {})]),
                                                          snappy=False), 400),
    ("bad snappy", {"Content-Type": PB}, b"\x20\x00\x01garbage", 400),
    ("bad labels string", {"Content-Type": PB}, pb_push(("job=a", [(NOW_NS, "x", {})])), 400),
    ("protobuf entry without timestamp", {"Content-Type": PB},
     snap(b"\x0a\x0d\x0a\x07{a=\"b\"}\x12\x02\x12\x00"), 400),
    ("bad gzip", {"Content-Type": JS, "Content-Encoding": "gzip"}, b"\x1f\x8bnot gzip", 400),
    ("wrong content type", {"Content-Type": "text/plain"}, _ok_json(), 415),
    ("brotli", {"Content-Type": JS, "Content-Encoding": "br"}, _ok_json(), 415),
    ("oversize", {"Content-Type": JS}, b" " * 300_000, 413),
    ("gzip bomb", {"Content-Type": JS, "Content-Encoding": "gzip"},
     gzip.compress(b" " * 20_000_000), 413),
    ("snappy bomb", {"Content-Type": PB}, snap(b"\0" * 5_000_000),
     413),
    ("timestamp as a number", {"Content-Type": JS}, json_push(({"a": "b"}, [[NOW_NS, "x"]])), 400),
    ("timestamp as words", {"Content-Type": JS}, json_push(({"a": "b"}, [["now", "x"]])), 400),
    ("timestamp past int64", {"Content-Type": JS},
     json_push(({"a": "b"}, [["9999999999999999999", "x"]])), 400),
    ("label value a number", {"Content-Type": JS}, json_push(({"a": 1}, [[str(NOW_NS), "x"]])),  # type: ignore[dict-item]
     400),
    ("value of one element", {"Content-Type": JS}, json_push(({"a": "b"}, [[str(NOW_NS)]])), 400),
    ("metadata a list", {"Content-Type": JS},
     json_push(({"a": "b"}, [[str(NOW_NS), "x", ["m"]]])), 400),
    ("line a number", {"Content-Type": JS}, json_push(({"a": "b"}, [[str(NOW_NS), 5]])), 400),
    ("broken JSON", {"Content-Type": JS}, b'{"streams": [', 400),
    ("empty line", {"Content-Type": JS}, json_push(({"a": "b"}, [[str(NOW_NS), ""]])), 400),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_gets_a_plain_text_error_and_stores_nothing(
    ingest_api: httpx.AsyncClient,
    redis_store: RedisStreamLogStore,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    answer = await ingest_api.post(PATH, content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text.strip()
    assert await count(redis_store) == 0


async def test_redis_down_is_503_with_retry_after() -> None:
    client = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    store = RedisStreamLogStore(client, instance="loki-down", prefix="down")
    async for url in serve(store):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            answer = await ingest_api.post(PATH, content=_ok_json(), headers={"Content-Type": JS})
    await client.aclose()
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) >= 1


async def test_too_many_entries_is_413(redis_store: RedisStreamLogStore) -> None:
    values = [[str(NOW_NS + i), f"m{i}"] for i in range(4)]
    async for url in serve(redis_store, max_batch_items=3):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            answer = await ingest_api.post(
                PATH, content=json_push(({"a": "b"}, values)), headers={"Content-Type": JS}
            )
    assert answer.status_code == 413
    assert await count(redis_store) == 0


async def test_api_keys_cover_the_loki_path(redis_store: RedisStreamLogStore) -> None:
    async for url in serve(redis_store, api_keys={"w": "write"}):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            refused = await ingest_api.post(PATH, content=_ok_json(), headers={"Content-Type": JS})
    assert refused.status_code == 401


def test_the_lb_proxies_the_loki_path() -> None:
    assert proxied("POST", PATH)
    assert not proxied("POST", "/loki/api/v1/query")
