"""/schema/openapi.json tells the truth: every answer a real `aygolog api` gives matches it.

Each case provokes one (route, status) of a real instance on a real Redis and checks the answer
against the schema the same instance serves: the status is declared for the route, the media
type is declared, a JSON body validates against the declared schema (no undeclared fields), and
every declared required header is there. Then the other way round: every answer the schema
declares is provoked by some case here, so a declaration nothing can produce fails too.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest

from aygolog.embedded import EmbeddedRedis
from support import ServiceProcess

pytestmark = pytest.mark.timeout(120)

MAX_BODY = 4096
MAX_ITEMS = 5


# -- a small JSON Schema (OpenAPI 3.1) checker: the parts our schema uses ---------------------


def schema_errors(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], at: str
) -> list[str]:
    """Why `value` does not match `schema` (empty when it does).

    Objects with `properties` and no `additionalProperties` are closed: an undeclared field in
    an answer is a mismatch (the documentation would not mention it).
    """
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        return schema_errors(value, root["components"]["schemas"][name], root, at)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            matches = [s for s in schema[key] if not schema_errors(value, s, root, at)]
            if not matches:
                return [f"{at}: {value!r} matches none of {key} {schema[key]}"]
            if key == "oneOf" and len(matches) > 1:
                return [f"{at}: {value!r} matches more than one of oneOf"]
            return []
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: {value!r} not in {schema['enum']}"]
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, kind) for kind in kinds):
            return [f"{at}: {value!r} is not {'/'.join(kinds)}"]
    errors: list[str] = []
    if schema.get("format") == "date-time" and isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            errors.append(f"{at}: {value!r} is not a date-time")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{at}: {value!r} < {schema['minimum']}")
    if isinstance(value, dict):
        properties = schema.get("properties")
        errors += (
            f"{at}: required {name!r} missing"
            for name in schema.get("required", [])
            if name not in value
        )
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if properties is not None and name in properties:
                errors += schema_errors(item, properties[name], root, f"{at}.{name}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, root, f"{at}.{name}")
            elif properties is not None:
                errors.append(f"{at}: {name!r} is not declared")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], root, f"{at}[{index}]")
    return errors


def _is(value: Any, kind: str) -> bool:
    match kind:
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
        case "string":
            return isinstance(value, str)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "null":
            return value is None
    raise AssertionError(f"the checker does not know type {kind!r}")


def test_the_checker_can_fail() -> None:
    root = {
        "components": {
            "schemas": {
                "E": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "n": {"oneOf": [{"type": "integer"}, {"type": "null"}]},
                    },
                }
            }
        }
    }
    ref = {"$ref": "#/components/schemas/E"}
    assert schema_errors({"error": "x", "n": None}, ref, root, "$") == []
    assert schema_errors({"error": "x", "n": 2}, ref, root, "$") == []
    assert schema_errors({"n": 1}, ref, root, "$") == ["$: required 'error' missing"]
    assert schema_errors({"error": "x", "more": 1}, ref, root, "$") == ["$: 'more' is not declared"]
    assert schema_errors({"error": 1}, ref, root, "$") == ["$.error: 1 is not string"]
    assert schema_errors({"error": "x", "n": 1.5}, ref, root, "$") != []
    assert schema_errors("text", {"type": "object"}, root, "$") == ["$: 'text' is not object"]
    # Litestar's own error shape is not ours: the check catches the old declaration.
    litestar_400 = {
        "type": "object",
        "required": ["detail", "status_code"],
        "properties": {"status_code": {"type": "integer"}, "detail": {"type": "string"}},
    }
    ours = {"error": "invalid request", "detail": [{"field": "limit", "reason": "too small"}]}
    assert schema_errors(ours, litestar_400, root, "$") != []


# -- real instances ---------------------------------------------------------------------------


@dataclass
class Answer:
    """One provoked answer: the route template it went to, and what came back."""

    method: str
    route: str
    status: int
    headers: httpx.Headers
    body: bytes


@dataclass
class Instances:
    """A normal instance, one with API keys, one whose Redis is down, and the schema."""

    plain: ServiceProcess
    keyed: ServiceProcess
    down: ServiceProcess
    schema: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instances]:
    up = EmbeddedRedis()
    gone = EmbeddedRedis(data_dir=tmp_path_factory.mktemp("gone"))
    up.start()
    gone.start()
    common = {"AYGOLOG_MAX_BODY_BYTES": str(MAX_BODY), "AYGOLOG_MAX_BATCH_ITEMS": str(MAX_ITEMS)}
    plain = ServiceProcess(
        "api", env={**common, "AYGOLOG_REDIS_URL": up.url, "AYGOLOG_REDIS_PREFIX": _prefix()}
    )
    keyed = ServiceProcess(
        "api",
        env={
            **common,
            "AYGOLOG_REDIS_URL": up.url,
            "AYGOLOG_REDIS_PREFIX": _prefix(),
            "AYGOLOG_API_KEYS": "reader:read,writer:write",
        },
    )
    down = ServiceProcess(
        "api", env={**common, "AYGOLOG_REDIS_URL": gone.url, "AYGOLOG_REDIS_PREFIX": _prefix()}
    )
    try:
        for process in (plain, keyed, down):
            process.start(timeout=30)
        gone.stop()  # started with Redis (the tail reader connects), then Redis goes away
        schema = httpx.get(plain.url + "/schema/openapi.json").json()
        yield Instances(plain=plain, keyed=keyed, down=down, schema=schema)
    finally:
        for process in (plain, keyed, down):
            process.close()
        up.stop()
        gone.stop()


def _prefix() -> str:
    return f"oa{secrets.token_hex(4)}"


Call = Callable[[Instances], Answer]


def call(which: str, method: str, route: str, path: str | None = None, **kwargs: Any) -> Call:
    """A case: `method path` on one of the instances, checked against `route`'s declaration."""

    def run(live: Instances) -> Answer:
        process: ServiceProcess = getattr(live, which)
        url = process.url + (path or route)
        if route == "/api/logs/stream":
            with httpx.stream(method, url, timeout=10, **kwargs) as response:
                body = b"" if response.status_code == 200 else response.read()
                return Answer(method, route, response.status_code, response.headers, body)
        response = httpx.request(method, url, timeout=15, **kwargs)
        return Answer(method, route, response.status_code, response.headers, response.content)

    return run


def replayed(method: str, route: str, body: Any) -> Call:
    """The same request twice with one Idempotency-Key: the second answer."""

    def run(live: Instances) -> Answer:
        key = {"Idempotency-Key": secrets.token_hex(8)}
        first = httpx.request(method, live.plain.url + route, json=body, headers=key)
        assert first.status_code == 201, first.text
        return call("plain", method, route, json=body, headers=key)(live)

    return run


def conflict(method: str, route: str, body: Any, other: Any) -> Call:
    """One Idempotency-Key used for two different bodies: the second answer."""

    def run(live: Instances) -> Answer:
        key = {"Idempotency-Key": secrets.token_hex(8)}
        first = httpx.request(method, live.plain.url + route, json=body, headers=key)
        assert first.status_code == 201, first.text
        return call("plain", method, route, json=other, headers=key)(live)

    return run


BIG = "x" * (MAX_BODY + 1)
TEXT = {"content-type": "text/plain"}
BROKEN: dict[str, Any] = {
    "content": b'{"message": ',
    "headers": {"content-type": "application/json"},
}
# A truncated array for /api/logs: there a truncated object was a 500 on main (decode_logs let
# msgspec.DecodeError out of its slow path; wave2-api answers it with a 4xx).
BROKEN_ARRAY: dict[str, Any] = {
    "content": b'[{"message": ',
    "headers": {"content-type": "application/json"},
}
NDJSON = {"content-type": "application/x-ndjson"}
READER = {"X-Api-Key": "reader"}
WRITER = {"Authorization": "Bearer writer"}

# (route, method, status) -> how to provoke it
CASES: dict[tuple[str, str, int], Call] = {
    ("/api/log", "post", 201): call("plain", "POST", "/api/log", json={"message": "hello"}),
    ("/api/log", "post", 200): replayed("POST", "/api/log", {"name": "seed style"}),
    ("/api/log", "post", 400): call("plain", "POST", "/api/log", **BROKEN),
    ("/api/log", "post", 401): call("keyed", "POST", "/api/log", json={"message": "x"}),
    ("/api/log", "post", 403): call(
        "keyed", "POST", "/api/log", json={"message": "x"}, headers=READER
    ),
    ("/api/log", "post", 409): conflict("POST", "/api/log", {"message": "a"}, {"message": "b"}),
    ("/api/log", "post", 413): call("plain", "POST", "/api/log", json={"message": BIG}),
    ("/api/log", "post", 415): call("plain", "POST", "/api/log", content=b"x", headers=TEXT),
    ("/api/log", "post", 422): call("plain", "POST", "/api/log", json={"level": "info"}),
    ("/api/log", "post", 503): call("down", "POST", "/api/log", json={"message": "x"}),
    ("/api/logs", "post", 201): call(
        "plain", "POST", "/api/logs", content=b'{"message": "a"}\n{"message": "b"}\n',
        headers=NDJSON,
    ),
    ("/api/logs", "post", 200): replayed("POST", "/api/logs", [{"message": "a"}]),
    ("/api/logs", "post", 400): call("plain", "POST", "/api/logs", **BROKEN_ARRAY),
    ("/api/logs", "post", 401): call("keyed", "POST", "/api/logs", json=[{"message": "x"}]),
    ("/api/logs", "post", 403): call(
        "keyed", "POST", "/api/logs", json=[{"message": "x"}], headers=READER
    ),
    ("/api/logs", "post", 409): conflict(
        "POST", "/api/logs", [{"message": "a"}], [{"message": "b"}]
    ),
    ("/api/logs", "post", 413): call(
        "plain", "POST", "/api/logs", json=[{"message": "m"}] * (MAX_ITEMS + 1)
    ),
    ("/api/logs", "post", 415): call("plain", "POST", "/api/logs", content=b"x", headers=TEXT),
    ("/api/logs", "post", 422): call("plain", "POST", "/api/logs", json=[{"message": 1}, {}]),
    ("/api/logs", "post", 503): call("down", "POST", "/api/logs", json=[{"message": "x"}]),
    ("/api/log", "get", 200): call("plain", "GET", "/api/log", "/api/log?limit=5"),
    ("/api/log", "get", 400): call("plain", "GET", "/api/log", "/api/log?limit=0"),
    ("/api/log", "get", 401): call("keyed", "GET", "/api/log"),
    ("/api/log", "get", 403): call("keyed", "GET", "/api/log", headers=WRITER),
    ("/api/log", "get", 503): call("down", "GET", "/api/log"),
    ("/api/logs", "get", 200): call("plain", "GET", "/api/logs", "/api/logs?limit=2"),
    ("/api/logs", "get", 400): call("plain", "GET", "/api/logs", "/api/logs?limit=many"),
    ("/api/logs", "get", 401): call("keyed", "GET", "/api/logs", headers={"X-Api-Key": "nope"}),
    ("/api/logs", "get", 403): call("keyed", "GET", "/api/logs", headers=WRITER),
    ("/api/logs", "get", 422): call("plain", "GET", "/api/logs", "/api/logs?level=loud"),
    ("/api/logs", "get", 503): call("down", "GET", "/api/logs"),
    ("/api/logs/stats", "get", 200): call("plain", "GET", "/api/logs/stats"),
    ("/api/logs/stats", "get", 401): call("keyed", "GET", "/api/logs/stats"),
    ("/api/logs/stats", "get", 403): call("keyed", "GET", "/api/logs/stats", headers=WRITER),
    ("/api/logs/stats", "get", 503): call("down", "GET", "/api/logs/stats"),
    ("/api/logs/count", "get", 200): call(
        "plain", "GET", "/api/logs/count", params={"query": "| count() by (level) step 1m"}
    ),
    ("/api/logs/count", "get", 400): call(
        "plain", "GET", "/api/logs/count", params={"query": "service:(a OR"}
    ),
    ("/api/logs/count", "get", 401): call("keyed", "GET", "/api/logs/count"),
    ("/api/logs/count", "get", 403): call("keyed", "GET", "/api/logs/count", headers=WRITER),
    ("/api/logs/count", "get", 422): call(
        "plain", "GET", "/api/logs/count", params={"query": "| count() step 1s", "since": "30d"}
    ),
    ("/api/logs/count", "get", 503): call("down", "GET", "/api/logs/count"),
    ("/api/logs/stream", "get", 200): call("plain", "GET", "/api/logs/stream"),
    ("/api/logs/stream", "get", 400): call(
        "plain", "GET", "/api/logs/stream", params={"query": "error _time:5m"}
    ),
    ("/api/logs/stream", "get", 422): call(
        "plain", "GET", "/api/logs/stream", "/api/logs/stream?last_event_id=yesterday"
    ),
    ("/api/logs/stream", "get", 401): call("keyed", "GET", "/api/logs/stream"),
    ("/api/logs/stream", "get", 403): call(
        "keyed", "GET", "/api/logs/stream", headers=WRITER
    ),
    ("/health", "get", 200): call("plain", "GET", "/health"),
    ("/health/ready", "get", 200): call("plain", "GET", "/health/ready"),
    ("/health/ready", "get", 503): call("down", "GET", "/health/ready"),
    ("/metrics", "get", 200): call("plain", "GET", "/metrics"),
}  # fmt: skip


def _media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: f"{c[1].upper()} {c[0]} {c[2]}")
def test_answer_matches_the_schema(instances: Instances, case: tuple[str, str, int]) -> None:
    route, method, status = case
    answer = CASES[case](instances)
    assert answer.status == status, f"{method.upper()} {route}: {answer.status} {answer.body!r}"
    schema = instances.schema
    declared = schema["paths"][route][method]["responses"]
    assert str(status) in declared, f"{status} is not declared for {method.upper()} {route}"
    response = declared[str(status)]
    content: dict[str, Any] = response.get("content") or {}
    media = {_media(kind): value for kind, value in content.items()}
    kind = _media(answer.headers.get("content-type", ""))
    assert kind in media, f"answered {kind!r}, declared {sorted(media)}"
    if kind == "application/json":
        errors = schema_errors(json.loads(answer.body), media[kind]["schema"], schema, "$")
        assert errors == [], f"{method.upper()} {route} {status}: {errors}"
    for name, header in (response.get("headers") or {}).items():
        if header.get("required"):
            assert name in answer.headers, f"declared header {name} missing"
            if header["schema"].get("type") == "integer":
                assert re.fullmatch(r"\d+", answer.headers[name]), answer.headers[name]


def test_every_declared_answer_is_provoked(instances: Instances) -> None:
    declared = {
        (path, method, int(status))
        for path, operations in instances.schema["paths"].items()
        for method, operation in operations.items()
        for status in operation.get("responses", {})
    }
    assert declared - set(CASES) == set(), "declared but never answered by any case here"
    assert set(CASES) - declared == set(), "answered but not declared"


def test_no_generated_examples_and_no_litestar_error_shape(instances: Instances) -> None:
    text = str(instances.schema)
    assert "status_code" not in text  # Litestar's default error body
    assert "examples" not in text  # random examples (a negative retry_after...) mislead
