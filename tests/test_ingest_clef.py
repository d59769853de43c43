"""Seq ingestion: the pure CLEF / legacy JSON decoder (tables), and the routes served in-process
(uvicorn on loopback) over a real Redis: 201 on success, Seq's `{"Error": ...}` answers,
refused bodies store nothing, API keys in Seq's two forms."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from aygolog.embedded import free_port
from aygolog.ingest.body import BodyError, split_valid
from aygolog.ingest.clef import CLEF, decode_events, render_template
from aygolog.lb.app import proxied
from aygolog.models import LogLevel, LogQuery
from aygolog.store import RedisStreamLogStore
from ingest_support import count, serve

pytestmark = pytest.mark.timeout(60)

JS = "application/json"
NOW = datetime.now(UTC).replace(microsecond=123456)
T = NOW.isoformat()
ACCEPTED = {"MinimumLevelAccepted": None}
TWO = [{"@t": T, "@m": "one"}, {"@t": T, "@m": "two"}]


def clef(*events: dict[str, Any], sep: str = "\n") -> bytes:
    return sep.join(json.dumps(event) for event in events).encode()


def legacy(*events: dict[str, Any]) -> bytes:
    return json.dumps({"Events": list(events)}).encode()


# -- the decoder ------------------------------------------------------------------------------


def test_clef_event_mapping() -> None:
    body = clef(
        {
            "@t": T,
            "@mt": "Paid {Amount} for {@Order} by {$User} ({Missing})",
            "@l": "Warning",
            "@x": "System.Exception: boom\n   at Shop.Pay()",
            "@tr": "4bf92f3577b34da6a3ce929d0e0e4736",
            "@sp": "00f067aa0ba902b7",
            "@i": "a1b2c3d4",
            "@r": ["ignored"],
            "Amount": 12.5,
            "Order": {"Id": 7, "Lines": [1, 2]},
            "User": "ann",
            "@@odd": "escaped",
            "Application": "shop",
        }
    )
    (entry,) = decode_events(body, CLEF, clef=True).logs
    assert entry.message == (
        'Paid 12.5 for {"Id":7,"Lines":[1,2]} by ann ({Missing})\n'
        "System.Exception: boom\n   at Shop.Pay()"
    )
    assert (entry.level, entry.service, entry.timestamp) == (LogLevel.WARNING, "shop", NOW)
    assert entry.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert entry.attributes == {
        "Amount": 12.5,
        "Order.Id": 7,
        "Order.Lines": "[1,2]",
        "User": "ann",
        "@odd": "escaped",
        "span_id": "00f067aa0ba902b7",
        "event_id": "a1b2c3d4",
    }


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("Verbose", LogLevel.TRACE),
        ("Debug", LogLevel.DEBUG),
        ("Information", LogLevel.INFO),
        ("Warning", LogLevel.WARNING),
        ("Error", LogLevel.ERROR),
        ("Fatal", LogLevel.CRITICAL),
        ("CRITICAL", LogLevel.CRITICAL),
        ("warn", LogLevel.WARNING),
        (None, LogLevel.INFO),
    ],
)
def test_seq_level_names(name: str | None, level: LogLevel) -> None:
    event = {"@t": T, "@m": "x"} | ({"@l": name} if name else {})
    (entry,) = decode_events(clef(event), CLEF, clef=True).logs
    assert entry.level is level
    assert "@l" not in entry.attributes


def test_unknown_level_is_info_and_kept() -> None:
    (entry,) = decode_events(clef({"@m": "x", "@l": "Chatty"}), CLEF, clef=True).logs
    assert (entry.level, entry.attributes) == (LogLevel.INFO, {"@l": "Chatty"})
    assert entry.timestamp is None  # no @t: the receive time


def test_legacy_json_is_read_like_clef() -> None:
    body = legacy(
        {
            "Timestamp": NOW.isoformat(sep=" "),
            "Level": "ERROR",
            "MessageTemplate": "Order {OrderId} failed",
            "Exception": "Traceback ...",
            "Properties": {"OrderId": 42, "@t": "a property, not the time", "service": "api"},
        }
    )
    batch = decode_events(body, JS, clef=False)
    (entry,) = batch.logs
    assert (entry.message, entry.level, entry.service) == (
        "Order 42 failed\nTraceback ...",
        LogLevel.ERROR,
        "api",
    )
    assert entry.timestamp == NOW
    assert entry.attributes == {"OrderId": 42, "@t": "a property, not the time"}
    assert batch.places == ["Events[0]"]
    assert batch.all_timed


def test_crlf_and_blank_lines_and_places() -> None:
    body = clef({"@t": T, "@m": "a"}, {"@m": "b"}, sep="\r\n\r\n")
    batch = decode_events(body, "", clef=True)
    assert [e.message for e in batch.logs] == ["a", "b"]
    assert batch.places == ["line 1", "line 3"]
    assert not batch.all_timed


def test_a_service_name_outside_our_pattern_is_fitted_and_kept() -> None:
    event = {"@m": "x", "@ra": {"service.name": "my shop!"}}
    (entry,) = decode_events(clef(event), CLEF, clef=True).logs
    assert entry.service == "my_shop_"
    assert entry.attributes == {"service.name": "my shop!"}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{literal}} {A}", "{literal} 1"),
        ("[{A,3}] [{A,-3}]", "[  1] [1  ]"),
        ("{A:000.00}", "1"),
        ("{S} {@S} {$S}", 'hi "hi" hi'),
        ("{0} and {1}", "zero and {1}"),
        ("{N} {B}", "null true"),
        ("unclosed {A", "unclosed {A"),
        ("[{A,99999999}]", "[" + " " * 1023 + "1]"),  # bounded
        ("{A,9999999999}", "{A,9999999999}"),  # not an alignment we read: as written
    ],
)
def test_render_template(template: str, expected: str) -> None:
    props = {"A": 1, "S": "hi", "0": "zero", "N": None, "B": True}
    assert render_template(template, props) == expected


def test_rendering_is_bounded() -> None:
    text = render_template("{A}" * 1000 + " end", {"A": "x" * 1000}, max_chars=5000)
    assert 5000 < len(text) < 8000
    assert text.endswith(" end")
    event = {"@mt": "{A}" * 100_000, "A": "x" * 1000}
    (entry,) = decode_events(clef(event), CLEF, clef=True).logs
    assert len(entry.message) < 100_000  # not 100 MB; and past the limit, so refused
    assert split_valid([entry]).refused[0].field == "message"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([CLEF, JS, "", "text/html"]), st.booleans())
def test_any_body_decodes_or_is_a_body_error(body: bytes, kind: str, is_clef: bool) -> None:
    status = None
    try:
        decode_events(body, kind, clef=is_clef)
    except BodyError as exc:
        status = exc.status
    assert status in (None, 400, 415)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_KEYS = st.sampled_from(["@t", "@m", "@mt", "@l", "@x", "@tr", "@sp", "@i", "@r", "@ra", "@@a",
                         "@zz", "Application", "service.name", "A", ""])  # fmt: skip
_STRINGS = st.sampled_from(
    [T, "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "{A}", "{A,-5:x}", "Fatal"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(_KEYS, _JSON_VALUES | _STRINGS, max_size=8), max_size=4))
def test_any_events_decode_and_check_or_are_a_400(events: list[dict[str, Any]]) -> None:
    """Whatever JSON values the reserved fields hold: a 400, or entries our rules can check."""
    try:
        batch = decode_events(clef(*events), CLEF, clef=True)
    except BodyError as exc:
        assert exc.status == 400  # noqa: PT017
        return
    split_valid(batch.logs)


# -- the routes, in-process over a real Redis --------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/ingest/clef", {"Content-Type": CLEF}, clef(*TWO)),
        ("/ingest/clef", {}, clef(*TWO)),
        ("/api/events/raw?clef", {"Content-Type": JS}, clef(*TWO)),
        ("/api/events/raw", {"Content-Type": CLEF}, clef(*TWO)),
        ("/api/events/raw", {"Content-Type": JS},
         legacy(*({"Timestamp": e["@t"], "MessageTemplate": e["@m"]} for e in TWO))),
    ],
)  # fmt: skip
async def test_each_form_is_201_and_a_retry_is_stored_once(
    ingest_api: httpx.AsyncClient,
    redis_store: RedisStreamLogStore,
    path: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    answer = await ingest_api.post(path, content=body, headers=headers)
    assert (answer.status_code, answer.json()) == (201, ACCEPTED), answer.text
    again = await ingest_api.post(
        path, content=gzip.compress(body), headers={**headers, "Content-Encoding": "gzip"}
    )
    assert (again.status_code, again.json()) == (201, ACCEPTED)
    page = await redis_store.query(LogQuery(limit=10))
    assert sorted(e.message for e in page.items) == ["one", "two"]


async def test_events_without_time_are_not_deduplicated(
    ingest_api: httpx.AsyncClient, redis_store: RedisStreamLogStore
) -> None:
    body = clef({"@m": "tick"})
    for _ in range(2):
        assert (await ingest_api.post("/ingest/clef", content=body)).status_code == 201
    assert await count(redis_store) == 2


async def test_one_refused_event_refuses_the_body(
    ingest_api: httpx.AsyncClient, redis_store: RedisStreamLogStore
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    body = clef({"@t": T, "@m": "fine"}, {"@t": later, "@m": "later"})
    answer = await ingest_api.post("/ingest/clef", content=body)
    assert answer.status_code == 400
    error = answer.json()["Error"]
    assert error.startswith("line 2: timestamp")
    assert "nothing stored" in error
    twin = legacy({"MessageTemplate": "ok"}, {"MessageTemplate": ""})
    answer = await ingest_api.post("/api/events/raw", content=twin, headers={"Content-Type": JS})
    assert answer.status_code == 400
    assert answer.json()["Error"].startswith("Events[1]: message")
    assert await count(redis_store) == 0


BAD_INPUTS: list[tuple[str, str, dict[str, str], bytes, int]] = [
    ("line not JSON", "/ingest/clef", {}, b'{"@m": "ok"}\n{"@m": ', 400),
    ("line an array", "/ingest/clef", {}, b'["@m", "x"]', 400),
    ("timestamp a number", "/ingest/clef", {}, clef({"@t": 1765000000, "@m": "x"}), 400),
    ("timestamp words", "/ingest/clef", {}, clef({"@t": "yesterday", "@m": "x"}), 400),
    ("timestamp with no UTC time", "/ingest/clef", {},
     clef({"@t": "0001-01-01T00:00:00+14:00", "@m": "x"}), 400),
    ("message a number", "/ingest/clef", {}, clef({"@t": T, "@m": 5}), 400),
    ("template an object", "/ingest/clef", {}, clef({"@t": T, "@mt": {"a": 1}}), 400),
    ("level a number", "/ingest/clef", {}, clef({"@t": T, "@m": "x", "@l": 3}), 400),
    ("trace id with spaces", "/ingest/clef", {}, clef({"@t": T, "@m": "x", "@tr": "a b"}), 400),
    ("no message", "/ingest/clef", {}, clef({"@t": T, "Amount": 1}), 400),
    ("legacy without Events", "/api/events/raw", {"Content-Type": JS}, b'{"events": []}', 400),
    ("legacy Events an object", "/api/events/raw", {"Content-Type": JS}, b'{"Events": {}}', 400),
    ("legacy Properties a list", "/api/events/raw", {"Content-Type": JS},
     legacy({"MessageTemplate": "x", "Properties": [1]}), 400),
    ("legacy not JSON", "/api/events/raw", {"Content-Type": JS}, b"@t=now", 400),
    ("bad gzip", "/ingest/clef", {"Content-Encoding": "gzip"}, b"\x1f\x8bnot gzip", 400),
    ("brotli", "/ingest/clef", {"Content-Encoding": "br"}, clef({"@m": "x"}), 415),
    ("wrong content type", "/ingest/clef", {"Content-Type": "text/html"}, clef({"@m": "x"}), 415),
    ("xml on raw", "/api/events/raw", {"Content-Type": "application/xml"}, b"<e/>", 415),
    ("oversize", "/ingest/clef", {}, b" " * 300_000, 413),
    ("gzip bomb", "/ingest/clef", {"Content-Encoding": "gzip"},
     gzip.compress(b" " * 20_000_000), 413),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "headers", "body", "status"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_gets_seqs_error_shape_and_stores_nothing(
    ingest_api: httpx.AsyncClient,
    redis_store: RedisStreamLogStore,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    answer = await ingest_api.post(path, content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert list(answer.json()) == ["Error"]
    assert answer.json()["Error"]
    assert await count(redis_store) == 0


async def test_redis_down_is_503_with_retry_after() -> None:
    client = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    store = RedisStreamLogStore(client, instance="seq-down", prefix="down")
    async for url in serve(store):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            answer = await ingest_api.post("/ingest/clef", content=clef({"@t": T, "@m": "x"}))
    await client.aclose()
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.json()["Error"]


async def test_too_many_events_is_413(redis_store: RedisStreamLogStore) -> None:
    body = clef(*({"@t": T, "@m": f"m{i}"} for i in range(4)))
    async for url in serve(redis_store, max_batch_items=3):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            answer = await ingest_api.post("/ingest/clef", content=body)
    assert (answer.status_code, list(answer.json())) == (413, ["Error"])
    assert await count(redis_store) == 0


async def test_api_keys_in_seqs_forms(redis_store: RedisStreamLogStore) -> None:
    body = clef({"@t": T, "@m": "x"})
    async for url in serve(redis_store, api_keys={"w": "write", "r": "read"}):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            none = await ingest_api.post("/ingest/clef", content=body)
            wrong = await ingest_api.post(
                "/ingest/clef", content=body, headers={"X-Seq-ApiKey": "x"}
            )
            reader = await ingest_api.post("/api/events/raw?clef&apiKey=r", content=body)
            header = await ingest_api.post(
                "/ingest/clef", content=body, headers={"X-Seq-ApiKey": "w"}
            )
            query = await ingest_api.post("/api/events/raw?clef&apiKey=w", content=body)
            bearer = await ingest_api.post(
                "/ingest/clef", content=body, headers={"Authorization": "Bearer w"}
            )
            # Seq's forms stay on Seq's paths: our own API does not read them.
            ours = await ingest_api.get("/api/logs?apiKey=r", headers={"X-Seq-ApiKey": "r"})
    assert (none.status_code, wrong.status_code, reader.status_code) == (401, 401, 403)
    assert "X-Seq-ApiKey" in none.json()["Error"]
    assert list(wrong.json()) == ["Error"]
    assert (header.status_code, query.status_code, bearer.status_code) == (201, 201, 201)
    assert ours.status_code == 401
    assert await count(redis_store) == 1  # the same bytes three times: stored once


def test_the_lb_proxies_the_seq_paths() -> None:
    assert proxied("POST", "/ingest/clef")
    assert proxied("POST", "/api/events/raw")
