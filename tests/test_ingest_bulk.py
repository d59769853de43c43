"""Elasticsearch `_bulk`: the pure decoder (tables), and the routes served in-process (uvicorn
on loopback) over a real Redis: ES's bulk response, per-item errors, whole-request errors that
store nothing, the product header on every answer, the start-up probes."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from aygolog.embedded import free_port
from aygolog.ingest import is_ingest_path
from aygolog.ingest.body import BodyError, split_valid
from aygolog.ingest.bulk import decode_bulk
from aygolog.lb.app import proxied
from aygolog.models import Direction, LogLevel, LogQuery
from aygolog.store import RedisStreamLogStore
from ingest_support import count, serve

pytestmark = pytest.mark.timeout(60)

ND = {"Content-Type": "application/x-ndjson"}
NOW = datetime.now(UTC).replace(microsecond=0)
STAMP = NOW.isoformat().replace("+00:00", "Z")


def ndjson(*lines: Any) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def doc(message: str, **more: Any) -> dict[str, Any]:
    return {"@timestamp": STAMP, "message": message, **more}


# -- the decoder ------------------------------------------------------------------------------


def test_mapping_of_an_ecs_document() -> None:
    body = ndjson(
        {"create": {"_index": "logs-app"}},
        {
            "@timestamp": "2026-12-06T10:00:00.123Z",
            "message": "paid",
            "log": {"level": "warn", "logger": "shop"},
            "service": {"name": "checkout", "version": "1.2"},
            "host": {"name": "web-1"},
            "tags": ["a", "b"],
            "order": {"id": 42, "total": 9.5},
        },
    )
    (log,) = decode_bulk(body, None).logs
    assert (log.message, log.level, log.service) == ("paid", LogLevel.WARNING, "checkout")
    assert log.timestamp == datetime(2026, 12, 6, 10, 0, 0, 123000, tzinfo=UTC)
    assert log.attributes == {
        "log.logger": "shop",
        "service.version": "1.2",
        "host.name": "web-1",
        "tags": '["a","b"]',
        "order.id": 42,
        "order.total": 9.5,
        "es.index": "logs-app",
    }


@pytest.mark.parametrize(
    ("fields", "message", "service", "level"),
    [
        ({"msg": "m", "service": "svc", "host.name": "h"}, "m", "svc", LogLevel.INFO),
        ({"log": "l", "host.name": "h", "level": "error"}, "l", "h", LogLevel.ERROR),
        ({"message": "a", "msg": "b", "service.name": "x", "service": "y"}, "a", "x", None),
        ({"message": "a", "level": "loud"}, "a", None, LogLevel.INFO),
    ],
)
def test_which_field_wins(
    fields: dict[str, Any], message: str, service: str | None, level: LogLevel | None
) -> None:
    (log,) = decode_bulk(ndjson({"index": {}}, fields), "i").logs
    assert (log.message, log.service) == (message, service)
    if level is not None:
        assert log.level is level
    if fields.get("level") == "loud":
        assert log.attributes["level"] == "loud"  # unknown level: info, and the field stays


def test_epoch_millis_and_naive_timestamps() -> None:
    body = ndjson(
        {"create": {}}, {"message": "a", "@timestamp": 1_700_000_000_000},
        {"create": {}}, {"message": "b", "@timestamp": "2026-12-06T10:00:00"},
    )  # fmt: skip
    first, second = decode_bulk(body, "i").logs
    assert first.timestamp == datetime.fromtimestamp(1_700_000_000, UTC)
    assert second.timestamp == datetime(2026, 12, 6, 10, tzinfo=UTC)


def test_per_item_refusals_keep_their_place() -> None:
    body = ndjson(
        {"create": {}}, doc("ok"),
        {"delete": {"_id": "1"}},
        {"update": {"_id": "1"}}, {"doc": {}},
        {"index": {}}, {"nomessage": 1},
        {"index": {}}, b"[1, 2]",
        {"index": {}}, doc("x", **{"@timestamp": "yesterday"}),
        {"create": {}}, doc("ok2"),
    )  # fmt: skip
    batch = decode_bulk(body, "i")
    assert [log.message for log in batch.logs] == ["ok", "ok2"]
    assert [item.status for item in batch.items] == [201, 400, 400, 400, 400, 400, 201]
    assert batch.refused == 5


@pytest.mark.parametrize(
    "body",
    [b"", b"\n\n", b"not json\n", b'{"create": {}, "index": {}}\n{}\n', b'{"upsert": {}}\n{}\n',
     b'{"create": {}}\n', b'{"create": 1}\n{}\n', b"[]\n"],
)  # fmt: skip
def test_bodies_refused_whole(body: bytes) -> None:
    with pytest.raises(BodyError) as raised:
        decode_bulk(body, "i")
    assert raised.value.status == 400


_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
_KEYS = st.sampled_from(["message", "msg", "log", "@timestamp", "level", "log.level", "service",
                         "service.name", "host.name", "log", "x"])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.dictionaries(st.sampled_from(["create", "index", "delete", "update", "x"]),
                            st.dictionaries(st.sampled_from(["_index", "_id"]), _JSON),
                            min_size=1, max_size=2).map(json.dumps).map(str.encode),
            st.dictionaries(_KEYS, _JSON, max_size=5).map(json.dumps).map(str.encode),
        ),
        max_size=8,
    )
)  # fmt: skip
def test_any_body_decodes_or_is_a_400(lines: list[bytes]) -> None:
    try:
        batch = decode_bulk(b"\n".join(lines), "i")
    except BodyError as exc:
        status = exc.status
        batch = None
    if batch is None:
        assert status == 400
        return
    assert len(batch.logs) + batch.refused == len(batch.items)
    if batch.logs:
        split_valid(batch.logs)  # what the route does next must not raise either


def test_the_paths_are_ingest_paths() -> None:
    for path in ("/_bulk", "/es", "/es/", "/es/_bulk", "/es/logs/_bulk", "/es/_license"):
        assert is_ingest_path(path), path
        assert proxied("POST", path), path
    for path in ("/", "/esx", "/health", "/logs/_search"):
        assert not is_ingest_path(path), path


# -- the routes over a real Redis ---------------------------------------------------------------


async def test_bulk_is_stored_answered_and_a_retry_is_stored_once(
    ingest_api: httpx.AsyncClient, redis_store: RedisStreamLogStore
) -> None:
    body = ndjson({"create": {}}, doc("one", level="error"), {"index": {}}, doc("two"))
    answer = await ingest_api.post("/es/app/_bulk", content=body, headers=ND)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-elastic-product"] == "Elasticsearch"
    reply = answer.json()
    assert reply["errors"] is False
    assert [next(iter(item)) for item in reply["items"]] == ["create", "index"]
    assert [item[next(iter(item))]["status"] for item in reply["items"]] == [201, 201]
    again = await ingest_api.put("/es/app/_bulk", content=body, headers=ND)  # ES takes PUT too
    assert again.json()["items"] == reply["items"]  # the same ids: a replay
    page = await redis_store.query(LogQuery(limit=10, direction=Direction.FORWARD))
    assert [(e.message, e.level, e.attributes["es.index"]) for e in page.items] == [
        ("one", LogLevel.ERROR, "app"),
        ("two", LogLevel.INFO, "app"),
    ]
    ids = [item[next(iter(item))]["_id"] for item in reply["items"]]
    assert ids == [e.id for e in page.items]


async def test_refused_items_are_reported_and_the_rest_stored(
    ingest_api: httpx.AsyncClient, redis_store: RedisStreamLogStore
) -> None:
    body = ndjson(
        {"create": {"_index": "a"}}, doc("kept"),
        {"create": {"_index": "a"}}, {"message": ""},
        {"create": {"_index": "a"}}, doc("x" * 10, **{"@timestamp": "2999-01-01T00:00:00Z"}),
        {"delete": {"_index": "a", "_id": "1"}},
    )  # fmt: skip
    answer = await ingest_api.post("/_bulk", content=gzip.compress(body),
                            headers={**ND, "Content-Encoding": "gzip"})  # fmt: skip
    reply = answer.json()
    assert answer.status_code == 200
    assert reply["errors"] is True
    statuses = [item[next(iter(item))]["status"] for item in reply["items"]]
    assert statuses == [201, 400, 400, 400]
    for item in reply["items"][1:]:
        error = item[next(iter(item))]["error"]
        assert error["type"]
        assert error["reason"]
    assert "timestamp" in reply["items"][2]["create"]["error"]["reason"]  # our future-time rule
    assert [e.message for e in (await redis_store.query(LogQuery(limit=10))).items] == ["kept"]


def _es_error(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["x-elastic-product"] == "Elasticsearch"
    reply = answer.json()
    assert reply["status"] == status
    if isinstance(reply["error"], dict):
        assert reply["error"]["type"]
        assert reply["error"]["reason"]
        assert reply["error"]["root_cause"]
    else:
        assert reply["error"]


BAD_INPUTS: list[tuple[str, dict[str, str], bytes, int]] = [
    ("empty body", ND, b"", 400),
    ("not JSON", ND, b"{nope\n", 400),
    ("action is an array", ND, b"[]\n{}\n", 400),
    ("two actions in a line", ND, b'{"create":{},"index":{}}\n{}\n', 400),
    ("unknown action", ND, ndjson({"upsert": {}}, doc("a")), 400),
    ("action without document", ND, ndjson({"create": {}}), 400),
    ("metadata not an object", ND, ndjson({"create": "x"}, doc("a")), 400),
    ("bad gzip", {**ND, "Content-Encoding": "gzip"}, b"\x1f\x8bnot gzip", 400),
    ("truncated gzip", {**ND, "Content-Encoding": "gzip"}, gzip.compress(b"x" * 100)[:20], 400),
    ("unknown encoding", {**ND, "Content-Encoding": "br"}, ndjson({"create": {}}, doc("a")), 415),
    ("wrong content type", {"Content-Type": "text/plain"}, ndjson({"create": {}}, doc("a")), 406),
    ("oversize", ND, ndjson({"create": {}}, doc("a" * 250_000)), 413),
    ("gzip bomb", {**ND, "Content-Encoding": "gzip"}, gzip.compress(b" " * 5_000_000), 413),
    ("not UTF-8", ND, b'{"create": {}}\n{"message": "\xff\xfe"}\n' + b"\xff\n", 400),
]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_gets_an_es_error_and_stores_nothing(
    ingest_api: httpx.AsyncClient,
    redis_store: RedisStreamLogStore,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    answer = await ingest_api.post("/es/_bulk", content=body, headers=headers)
    _es_error(answer, status)
    assert await count(redis_store) == 0


async def test_probes_and_the_version_document(ingest_api: httpx.AsyncClient) -> None:
    root = await ingest_api.get("/es")
    assert root.status_code == 200
    assert root.json()["version"]["number"].startswith("8.")
    assert root.json()["tagline"] == "You Know, for Search"
    for method, path in [
        ("GET", "/es/"),
        ("GET", "/es/_license"),
        ("GET", "/es/_nodes/_local"),
        ("GET", "/es/_cluster/health"),
        ("GET", "/es/_ilm/policy/filebeat"),
        ("PUT", "/es/_ilm/policy/filebeat"),
        ("GET", "/es/_index_template/logs"),
        ("PUT", "/es/_index_template/logs"),
        ("HEAD", "/es"),
        ("HEAD", "/es/_index_template/logs"),
        ("HEAD", "/es/_template/logs"),
    ]:
        answer = await ingest_api.request(method, path, content=b"{}" if method == "PUT" else None)
        assert answer.status_code == 200, (method, path, answer.text)
        assert answer.headers["x-elastic-product"] == "Elasticsearch", (method, path)
    unknown = await ingest_api.get("/es/logs/_search")
    _es_error(unknown, 404)
    gone = await ingest_api.head("/es/_nope")
    assert gone.status_code == 404
    assert gone.headers["x-elastic-product"] == "Elasticsearch"


async def test_redis_down_is_503_with_retry_after() -> None:
    client = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    store = RedisStreamLogStore(client, instance="bulk-down", prefix="down")
    async for url in serve(store):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            answer = await ingest_api.post("/es/i/_bulk", content=ndjson({"create": {}}, doc("a")),
                                    headers=ND)  # fmt: skip
    await client.aclose()
    _es_error(answer, 503)
    assert int(answer.headers["retry-after"]) >= 1


async def test_too_many_documents_is_413(redis_store: RedisStreamLogStore) -> None:
    lines: list[dict[str, Any]] = []
    for i in range(4):
        lines += [{"create": {}}, doc(f"m{i}")]
    body = ndjson(*lines)
    async for url in serve(redis_store, max_batch_items=3):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            answer = await ingest_api.post("/es/i/_bulk", content=body, headers=ND)
    _es_error(answer, 413)
    assert await count(redis_store) == 0


async def test_api_keys_cover_the_es_paths(redis_store: RedisStreamLogStore) -> None:
    async for url in serve(redis_store, api_keys={"w": "write"}):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            body = ndjson({"create": {}}, doc("a"))
            refused = [
                (await ingest_api.post(path, content=body, headers=ND)).status_code
                for path in ("/_bulk", "/es/_bulk", "/es/i/_bulk")
            ]
            allowed = await ingest_api.post(
                "/es/i/_bulk", content=body, headers={**ND, "Authorization": "Bearer w"}
            )
    assert refused == [401, 401, 401]
    assert allowed.status_code == 200, allowed.text
