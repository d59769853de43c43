"""Hostile input over HTTP against a real `aygolog api` process on a real Redis: every bad body,
cursor or header gets a 4xx naming the problem, never a 5xx, and nothing of it is stored."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aygolog.embedded import EmbeddedRedis
from support import ServiceProcess

pytestmark = pytest.mark.timeout(180)

TOP = "18446744073709551615"


@pytest.fixture(scope="module")
def api(redis_server: EmbeddedRedis) -> Iterator[ServiceProcess]:
    env = {
        "AYGOLOG_REDIS_URL": redis_server.url,
        "AYGOLOG_REDIS_PREFIX": f"hostile{uuid.uuid4().hex[:8]}",
        "AYGOLOG_INSTANCE_NAME": "api-hostile",
    }
    process = ServiceProcess("api", env=env).start()
    httpx.post(process.url + "/api/log", json={"message": "already there"})
    yield process
    process.close()


@pytest.fixture(scope="module")
def client(api: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as http:
        yield http


def stored(client: httpx.Client) -> int:
    total: int = client.get("/api/logs/stats").json()["total"]
    return total


def assert_refused(response: httpx.Response, status: int, field: str, reason: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]
    assert any(d["field"] == field and reason in d["reason"] for d in body["detail"]), body
    assert "Traceback" not in response.text


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("path", "ctype", "body", "status", "reason"),
    [
        ("/api/log", "application/json", b'{"message": "\xff\xfe"}', 400, "not valid UTF-8"),
        ("/api/log", "application/json", b'{"message": "\xc0\xaf"}', 400, "not valid UTF-8"),
        ("/api/log", "application/json", b'{"message": "\xed\xa0\x80"}', 400, "not valid UTF-8"),
        ("/api/log", "application/json", b'{"message": "\\udc00"}', 400, "malformed JSON"),
        ("/api/log", "application/json", DEEP, 422, "expected"),
        ("/api/logs", "application/json", b'[{"message": "\xff"}]', 400, "not valid UTF-8"),
        ("/api/logs", "application/json", b'[{"message": "\xc0\xaf"}]', 400, "not valid UTF-8"),
        ("/api/logs", "application/json", DEEP, 400, "nested too deeply"),
        ("/api/logs", "application/json", b'[{"message": "m"}, ' + DEEP + b"]", 400,
         "nested too deeply"),
        ("/api/logs", "application/x-ndjson", b'{"message": "\xc0\xaf"}\n', 422,
         "not valid UTF-8"),
        ("/api/logs", "application/x-ndjson", DEEP, 422, "expected"),
    ],
)  # fmt: skip
def test_a_body_that_is_not_json_text_is_a_4xx_naming_why(
    client: httpx.Client, path: str, ctype: str, body: bytes, status: int, reason: str
) -> None:
    before = stored(client)
    response = client.post(path, content=body, headers={"Content-Type": ctype})
    assert_refused(response, status, "$", reason)
    assert stored(client) == before


@pytest.mark.parametrize(
    "cursor",
    [
        "99999999999999999999-0",
        "1-99999999999999999999",
        "18446744073709551616",
        "\u0661-0",
        "\u00b2",
        "1-0-0",
    ],
)
@pytest.mark.parametrize("path", ["/api/logs"])
def test_a_cursor_that_is_not_a_64_bit_stream_id_is_a_422(
    client: httpx.Client, path: str, cursor: str
) -> None:
    response = client.get(path, params={"cursor": cursor})
    assert_refused(response, 422, "cursor", "stream id")


@pytest.mark.parametrize(
    ("params", "count"),
    [
        ({"cursor": "0-0"}, 0),  # was 503 "Redis: invalid end ID for the interval script: <sha>"
        ({"cursor": "0"}, 0),
        ({"cursor": f"{TOP}-{TOP}", "direction": "forward"}, 0),
        ({"cursor": "0-0", "direction": "forward"}, 1),
        ({"cursor": f"{TOP}-{TOP}"}, 1),
        ({"since": "1900-01-01T00:00:00Z"}, 1),
        ({"until": "1900-01-01T00:00:00Z"}, 0),
    ],
)
def test_cursors_and_times_at_the_ends_of_the_id_space(
    client: httpx.Client, params: dict[str, str], count: int
) -> None:
    response = client.get("/api/logs", params={**params, "q": "already there"})
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == count


@pytest.mark.parametrize("how", ["header", "query"])
def test_an_overflowing_last_event_id_is_a_422_not_a_cut_stream(
    api: ServiceProcess, how: str
) -> None:
    bad = "99999999999999999999-0"
    headers = {"Last-Event-ID": bad} if how == "header" else {}
    params = {"last_event_id": bad} if how == "query" else {}
    with httpx.stream(
        "GET", api.url + "/api/logs/stream", headers=headers, params=params, timeout=10
    ) as response:
        response.read()
    assert_refused(response, 422, "last_event_id", "out of range")


def test_a_last_event_id_past_the_newest_entry_still_gets_new_entries(
    api: ServiceProcess, client: httpx.Client
) -> None:
    """A resume id beyond everything stored (a wiped store, a made-up id) used to hide every
    new entry forever: the stream skipped ids up to it."""
    lines: list[str] = []
    with httpx.stream(
        "GET",
        api.url + "/api/logs/stream",
        params={"service": "future"},
        headers={"Last-Event-ID": f"{TOP}-{TOP}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        stream = response.iter_lines()
        for line in stream:
            if line == ": connected":
                break
        client.post("/api/log", json={"message": "after the future", "service": "future"})
        for line in stream:
            lines.append(line)
            if line.startswith("data:"):
                break
    assert "after the future" in lines[-1]


# -- a short fuzz of every route's query parameters, headers and bodies --------------------------

_TEXT = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"-?[0-9]{0,25}(-[0-9]{0,25})?", fullmatch=True),
    st.sampled_from(["0-0", "0", f"{TOP}-{TOP}", "1e400", "nan", "-1", "15m", "9" * 40, ""]),
)
_PARAM_NAMES = st.sampled_from(
    ["level", "min_level", "service", "q", "since", "until", "attr", "limit", "cursor",
     "direction", "last_event_id"]
)  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/api/logs", "/api/log", "/api/logs/stats", "/api/logs/stream"]),
    params=st.lists(st.tuples(_PARAM_NAMES, _TEXT), max_size=4),
    last_event_id=st.one_of(
        st.none(),  # a header value an HTTP client can send (the server refuses others itself)
        _TEXT.filter(lambda t: t.isascii() and t.isprintable() and t == t.strip()),
    ),
)
def test_fuzzed_reads_never_get_a_5xx(
    api: ServiceProcess,
    path: str,
    params: list[tuple[str, str | int | float | bool | None]],
    last_event_id: str | None,
) -> None:
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    with httpx.stream(
        "GET", api.url + path, params=params, headers=headers, timeout=10
    ) as response:
        if path != "/api/logs/stream" or response.status_code != 200:
            response.read()
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["detail"], response.text


_BODY = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda head, tail: head + tail,
        st.sampled_from([b'{"message": "', b'[{"message": "', b'{"name": "', b"[", b"{"]),
        st.binary(max_size=60),
    ),
    st.sampled_from([DEEP[:20_000] + DEEP[-20_000:], b"[" * 5000, b'{"a":' * 5000]),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/api/log", "/api/logs"]),
    ctype=st.sampled_from(["application/json", "application/x-ndjson", "text/plain", "x/y+json"]),
    body=_BODY,
    key=st.one_of(st.none(), st.text(max_size=20).filter(lambda t: t.isascii())),
)
def test_fuzzed_writes_never_get_a_5xx(
    client: httpx.Client, path: str, ctype: str, body: bytes, key: str | None
) -> None:
    headers = {"Content-Type": ctype}
    if key is not None:
        headers["Idempotency-Key"] = key
    with contextlib.suppress(httpx.LocalProtocolError):  # a header httpx itself refuses
        response = client.post(path, content=body, headers=headers)
        assert response.status_code < 500, response.text
        assert "Traceback" not in response.text
