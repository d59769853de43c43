"""Elasticsearch `_bulk` subset (`POST /es/_bulk`, `/es/{index}/_bulk`): NDJSON action lines
and documents -> `NewLog`s, and ES's answers (the bulk response, error bodies, the version
document and the shippers' start-up probes). Pure: no I/O.

Mapping (docs/ingest.md has the table), after flattening the document to dotted keys (nested
objects and dotted names alike; arrays -> JSON text, as OTLP does):

- message: the first string of `message`, `msg`, `log`; none -> the item is refused (400).
- `@timestamp`: ISO 8601 text (no zone = UTC) or epoch milliseconds; none -> receive time.
- level: `level`, else `log.level`, read by `LogLevel.parse` (an unknown name gives info and
  the field stays as an attribute).
- service: `service.name` wins over `service`, which wins over `host.name` (`host.name` also
  stays as an attribute: a host is not a service).
- everything else -> attributes, plus `es.index` (the action's `_index` or the path's index).

Actions: `create` and `index` store their document; `delete` and `update` get a per-item 400
(aygolog's logs are append-only). A line that is not an action, or an action without its
document, refuses the whole request (400), as Elasticsearch does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from aygolog.ingest.body import BodyError, fit_service, flatten
from aygolog.models import AttributeValue, FieldError, Limits, LogLevel, NewLog
from aygolog.validation import DEFAULT_LIMITS

__all__ = [
    "CONTENT_TYPES",
    "ES_VERSION",
    "PRODUCT_HEADERS",
    "BulkBatch",
    "bulk_response",
    "decode_bulk",
    "error_body",
    "probe_answer",
    "version_document",
]

ES_VERSION: Final = "8.17.0"
PRODUCT_HEADERS: Final = {"X-Elastic-Product": "Elasticsearch"}
CONTENT_TYPES: Final = (
    "application/x-ndjson",
    "application/json",
    "application/vnd.elasticsearch+x-ndjson",
    "application/vnd.elasticsearch+json",
)
MESSAGE_FIELDS: Final = ("message", "msg", "log")
LEVEL_FIELDS: Final = ("level", "log.level")
SERVICE_FIELDS: Final = ("service.name", "service", "host.name")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DECODE: Final = msgspec.json.Decoder()


@dataclass
class Item:
    """One action of the request: where its log went in `BulkBatch.logs`, or why it did not."""

    action: str
    index: str
    log: int | None = None
    status: int = 201
    error_type: str = ""
    reason: str = ""


@dataclass
class BulkBatch:
    """A decoded bulk request: the documents to store, and every action in order."""

    logs: list[NewLog]
    items: list[Item]
    digest: str
    """SHA-256 (hex) of the path's index and the body: a shipper's retry sends the same bytes."""
    all_timed: bool = True
    """Every document carries its own `@timestamp` (so equal bodies are the same logs)."""
    refused: int = field(default=0)


def error_body(status: int, error_type: str, reason: str) -> dict[str, Any]:
    """Elasticsearch's error answer for a whole request."""
    cause = {"type": error_type, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


def version_document(cluster: str = "aygolog") -> dict[str, Any]:
    """What `GET /` answers: enough of ES's for clients' version checks."""
    return {
        "name": cluster,
        "cluster_name": cluster,
        "cluster_uuid": "aygolog-000000000000000",
        "version": {
            "number": ES_VERSION,
            "build_flavor": "default",
            "build_type": "docker",
            "lucene_version": "9.12.0",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search",
    }


def _timestamp(value: AttributeValue) -> datetime:
    """ES's default date format: ISO 8601 text or epoch milliseconds."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a date")
    if isinstance(value, int | float):
        return _EPOCH + timedelta(milliseconds=value)
    text = value.strip()
    if text.isdigit():
        return _EPOCH + timedelta(milliseconds=int(text))
    stamp = datetime.fromisoformat(text)
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def _document(doc: dict[str, Any], index: str, limits: Limits) -> tuple[NewLog, bool]:
    """(the log, whether it had its own time); ValueError names what is wrong."""
    flat: dict[str, AttributeValue] = {}
    flatten("", doc, flat, limits.max_attribute_value_bytes)
    message = None
    for name in MESSAGE_FIELDS:
        value = flat.get(name)
        if isinstance(value, str) and value:
            message = value
            del flat[name]
            break
    if message is None:
        raise ValueError("no message: the document needs a string message, msg or log field")
    timestamp = None
    if "@timestamp" in flat:
        try:
            timestamp = _timestamp(flat.pop("@timestamp"))
        except (ValueError, OverflowError, TypeError):
            raise ValueError(
                "failed to parse field [@timestamp] of type [date]: expected ISO 8601 text "
                "or epoch milliseconds"
            ) from None
    level = LogLevel.INFO
    for name in LEVEL_FIELDS:
        value = flat.get(name)
        if isinstance(value, str) and value:
            try:
                level = LogLevel.parse(value)
            except ValueError:
                break  # info, and the field stays
            del flat[name]
            break
    service = None
    for name in SERVICE_FIELDS:
        value = flat.get(name)
        if isinstance(value, str) and value:
            service = fit_service(value, limits)
            if service == value and name != "host.name":
                del flat[name]
            break
    flat["es.index"] = index
    return NewLog(
        message=message, level=level, service=service, timestamp=timestamp, attributes=flat
    ), timestamp is not None


def decode_bulk(
    body: bytes, default_index: str | None, limits: Limits = DEFAULT_LIMITS
) -> BulkBatch:
    """Decode an NDJSON bulk body (its `Content-Encoding` already undone).

    Raises:
        BodyError: 400 for a body ES would refuse whole (an empty body, a line that is not
            JSON, an unknown action, an action without its document).
    """
    lines = [line for line in body.split(b"\n") if line.strip()]
    if not lines:
        raise BodyError(400, "Validation Failed: 1: no requests added;")
    logs: list[NewLog] = []
    items: list[Item] = []
    all_timed = True
    at = 0
    while at < len(lines):
        number = at + 1
        try:
            action_line = _DECODE.decode(lines[at])
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise BodyError(400, f"line [{number}]: the action line is not JSON") from None
        if not isinstance(action_line, dict) or len(action_line) != 1:
            raise BodyError(
                400,
                f'line [{number}]: expected an action object with one key, like {{"create": {{}}}}',
            )
        action, meta = next(iter(action_line.items()))
        if action not in ("create", "index", "delete", "update"):
            raise BodyError(400, f"line [{number}]: unknown action [{action}]")
        if not isinstance(meta, dict):
            raise BodyError(400, f"line [{number}]: the [{action}] metadata must be an object")
        named = meta.get("_index")
        index = named if isinstance(named, str) and named else default_index
        at += 1
        if action == "delete":
            items.append(_refused(action, index, "delete is not supported: logs are append-only"))
            continue
        if at >= len(lines):
            raise BodyError(400, f"line [{number}]: the [{action}] action has no document line")
        doc_line = lines[at]
        at += 1
        if action == "update":
            items.append(_refused(action, index, "update is not supported: logs are append-only"))
            continue
        if index is None:
            items.append(
                Item(
                    action,
                    "",
                    status=400,
                    error_type="action_request_validation_exception",
                    reason="Validation Failed: 1: index is missing;",
                )
            )
            continue
        try:
            doc = _DECODE.decode(doc_line)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            items.append(_bad_doc(action, index, "the document is not JSON"))
            continue
        if not isinstance(doc, dict):
            items.append(_bad_doc(action, index, "the document must be a JSON object"))
            continue
        try:
            log, timed = _document(doc, index, limits)
        except ValueError as exc:
            items.append(_bad_doc(action, index, str(exc)))
            continue
        except RecursionError:  # msgspec decodes deeper JSON than flattening can walk
            items.append(_bad_doc(action, index, "the document is nested too deeply"))
            continue
        all_timed = all_timed and timed
        items.append(Item(action, index, log=len(logs)))
        logs.append(log)
    refused = sum(1 for item in items if item.log is None)
    # The path's index is part of what is stored (`es.index`), so part of the digest too.
    digest = hashlib.sha256((default_index or "").encode() + b"\n" + body).hexdigest()
    return BulkBatch(logs, items, digest, all_timed, refused)


def _refused(action: str, index: str | None, reason: str) -> Item:
    return Item(
        action, index or "", status=400, error_type="illegal_argument_exception", reason=reason
    )


def _bad_doc(action: str, index: str, reason: str) -> Item:
    return Item(action, index, status=400, error_type="document_parsing_exception", reason=reason)


def bulk_response(
    batch: BulkBatch, refused: list[FieldError], ids: list[str], took_ms: int
) -> dict[str, Any]:
    """ES's bulk answer: one item per action, `errors` when any was refused.

    Args:
        batch: the decoded request.
        refused: our rules' refusals, indexed into `batch.logs`.
        ids: the stored ids of the accepted logs, in order (the ones not in `refused`).
        took_ms: how long the request took.
    """
    reasons: dict[int, str] = {}
    for error in refused:
        if error.index is not None and error.index not in reasons:
            reasons[error.index] = error.describe()
    stored = iter(ids)
    out: list[dict[str, Any]] = []
    errors = False
    for item in batch.items:
        if item.log is not None and item.log in reasons:
            item = Item(
                item.action,
                item.index,
                status=400,
                error_type="document_parsing_exception",
                reason=reasons[item.log],
            )
        if item.log is None:
            errors = True
            body: dict[str, Any] = {
                "_index": item.index,
                "status": item.status,
                "error": {"type": item.error_type, "reason": item.reason},
            }
        else:
            body = {
                "_index": item.index,
                "_id": next(stored, ""),
                "_version": 1,
                "result": "created",
                "_shards": {"total": 1, "successful": 1, "failed": 0},
                "_seq_no": 0,
                "_primary_term": 1,
                "status": 201,
            }
        out.append({item.action: body})
    return {"took": took_ms, "errors": errors, "items": out}


_LICENSE: Final = {
    "license": {
        "status": "active",
        "uid": "aygolog",
        "type": "basic",
        "issue_date": "2026-01-01T00:00:00.000Z",
        "issue_date_in_millis": 1767225600000,
        "max_nodes": 1000,
        "max_resource_units": None,
        "issued_to": "aygolog",
        "issuer": "aygolog",
        "start_date_in_millis": -1,
    }
}
_NODES: Final = {
    "_nodes": {"total": 1, "successful": 1, "failed": 0},
    "cluster_name": "aygolog",
    "nodes": {},
}
_PROBES: Final = ("_ilm", "_index_template", "_template", "_ingest", "_data_stream", "_xpack")


def probe_answer(method: str, rest: str) -> dict[str, Any] | None:
    """A harmless answer to a shipper's start-up probe (`rest`: the path after `/es/`), or None
    for a path that is not one.

    Shippers ask for the license, the nodes, the cluster's health, and whether their ILM
    policy and index template exist (creating them if not): reads say they exist, writes are
    acknowledged and ignored (aygolog has no indices, templates or policies to manage).
    """
    parts = [part for part in rest.split("/") if part]
    if not parts:
        return None
    head, name = parts[0], (parts[-1] if len(parts) > 1 else "")
    if head == "_license" and method == "GET":
        return dict(_LICENSE)
    if head == "_nodes" and method == "GET":
        return dict(_NODES)
    if head == "_cluster" and method == "GET":  # Vector's health check: GET /_cluster/health
        return {"cluster_name": "aygolog", "status": "green", "number_of_nodes": 1}
    if head not in _PROBES:
        return None
    if method != "GET":
        return {"acknowledged": True}
    if head == "_ilm" and len(parts) >= 3 and parts[1] == "policy":
        return {name: {"version": 1, "policy": {"phases": {}}}}
    if head == "_index_template" and name:
        template = {"index_patterns": [f"{name}*"], "template": {}}
        return {"index_templates": [{"name": name, "index_template": template}]}
    if head == "_xpack":
        return {"features": {}, "license": {"status": "active", "type": "basic"}}
    return {}
