"""Elasticsearch `_bulk` through a live stack (the LB, 3 Log API instances, Redis) with the
official `elasticsearch` Python client (its product check included), read back through
aygolog's API."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch, helpers

from aygolog.models import LogLevel
from ingest_support import stored
from support import LiveStack
from test_ingest_bulk import BAD_INPUTS, STAMP, doc

pytestmark = pytest.mark.timeout(300)


def es(stack: LiveStack) -> Elasticsearch:
    return Elasticsearch(f"{stack.url}/es", request_timeout=60)


def test_the_client_sees_an_elasticsearch_8(stack: LiveStack) -> None:
    with es(stack) as client:
        info = client.info()  # the client's product check runs on this answer
    assert info["version"]["number"].startswith("8.")
    assert info["tagline"] == "You Know, for Search"
    with httpx.Client(base_url=stack.url) as http:
        probes = [
            http.head("/es"),
            http.get("/es/_license"),
            http.put("/es/_index_template/app", json={"index_patterns": ["app*"]}),
            http.head("/es/_ilm/policy/app"),
        ]
    assert [p.status_code for p in probes] == [200, 200, 200, 200]
    assert all(p.headers["x-elastic-product"] == "Elasticsearch" for p in probes)


def test_helpers_bulk_of_10000_documents_is_all_stored(stack: LiveStack) -> None:
    service = f"es-bulk-{uuid.uuid4().hex[:8]}"
    levels = ["debug", "info", "warning", "error", "critical"]

    def actions() -> Iterator[dict[str, Any]]:
        for i in range(10_000):
            yield {
                "_op_type": "create" if i % 2 else "index",
                "_index": "logs-app",
                "_source": doc(
                    f"order {i} paid",
                    service={"name": service},
                    log={"level": levels[i % 5]},
                    order={"n": i},
                ),
            }

    with es(stack) as client:
        ok, errors = helpers.bulk(client, actions(), chunk_size=500)
    assert (ok, errors) == (10_000, [])
    entries = stored(stack.url, service)
    assert len(entries) == 10_000
    assert sorted(int(e.message.split()[1]) for e in entries) == list(range(10_000))
    for entry in entries:
        i = entry.attributes["order.n"]
        assert isinstance(i, int)
        assert entry.level is LogLevel.parse(levels[i % 5])
        assert entry.attributes == {"order.n": i, "es.index": "logs-app"}
    assert len({e.instance for e in entries}) > 1  # 20 requests, spread by the LB


def test_three_bad_documents_are_reported_and_the_rest_stored(stack: LiveStack) -> None:
    service = f"es-bad-{uuid.uuid4().hex[:8]}"
    bad = {7: {"no": "message"}, 20: doc("late", **{"@timestamp": "tomorrow"}), 33: doc("")}
    sources = [bad.get(i, doc(f"m{i}", service=service)) for i in range(40)]
    with es(stack) as client:
        ok, errors = helpers.bulk(
            client,
            ({"_index": "app", "_source": source} for source in sources),
            raise_on_error=False,
        )
    assert ok == 37
    assert isinstance(errors, list)
    assert len(errors) == 3
    for error in errors:
        item = error["index"]
        assert item["status"] == 400
        assert item["error"]["type"]
        assert item["error"]["reason"]
    entries = stored(stack.url, service)
    assert sorted(e.message for e in entries) == sorted(f"m{i}" for i in range(40) if i not in bad)
    assert all(e.timestamp.isoformat().startswith(STAMP[:19]) for e in entries)


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [case[1:] for case in BAD_INPUTS if case[3] != 413],
    ids=[case[0] for case in BAD_INPUTS if case[3] != 413],
)
def test_bad_input_through_the_lb_keeps_es_answer(
    stack: LiveStack, headers: dict[str, str], body: bytes, status: int
) -> None:
    with httpx.Client(base_url=stack.url) as client:
        answer = client.post("/es/_bulk", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["x-elastic-product"] == "Elasticsearch"
    assert answer.json()["status"] == status


def test_gzip_bomb_through_the_lb_is_413(stack: LiveStack) -> None:
    with httpx.Client(base_url=stack.url) as client:
        answer = client.post(
            "/es/i/_bulk",
            content=gzip.compress(b" " * 30_000_000),
            headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
        )
    assert answer.status_code == 413
    assert answer.json()["error"]["type"] == "content_too_long_exception"
