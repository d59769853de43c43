"""Foreign ingest protocols: one pure module per protocol, wire bytes -> `NewLog`s and answers.

Each module decodes a request body (after its content encoding) into `NewLog`s and builds the
protocol's own answers; none does I/O. The Log API's routes (`aygolog.server.ingest`) read the
body, call the decoder, check the entries with the rules of `POST /api/logs`, store them with one
`append_many`, and send the answer the module built.

- `body.py`: what every protocol shares: `Content-Encoding` (gzip) with a bounded decompressed
  size, and `split_valid` (the entries that pass our rules, and why the others did not).
- `otlp.py`: OpenTelemetry OTLP/HTTP logs (`POST /v1/logs`), protobuf and JSON.
- `clef.py`: Seq (`POST /ingest/clef`, `POST /api/events/raw`), CLEF and legacy JSON.
- `loki.py`: Loki push (`POST /loki/api/v1/push`), JSON and snappy-compressed protobuf, with
  `loki_push_pb2` compiled from `proto/loki_push.proto` (`make loki-proto`).
- `bulk.py`: the Elasticsearch `_bulk` subset under `ES_PREFIX` (`/es/_bulk`, `/es/{index}/_bulk`,
  `/es/` and the shippers' start-up probes), plus `/_bulk` at the root.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ES_BULK_PATH",
    "ES_PREFIX",
    "INGEST_PATHS",
    "LOKI_PATH",
    "OTLP_PATHS",
    "SEQ_PATHS",
    "is_ingest_path",
]

OTLP_PATHS: Final = ("/v1/logs", "/otlp/v1/logs")
LOKI_PATH: Final = "/loki/api/v1/push"
ES_PREFIX: Final = "/es"
ES_BULK_PATH: Final = "/_bulk"
SEQ_PATHS: Final = ("/ingest/clef", "/api/events/raw")
INGEST_PATHS: Final = frozenset({*OTLP_PATHS, LOKI_PATH, ES_BULK_PATH, *SEQ_PATHS})
"""Every ingest protocol's write path: what the LB proxies besides `/api/*`, and what API keys
must cover (one list, here, so that a new protocol cannot be added to one and not the other)."""


def is_ingest_path(path: str) -> bool:
    """Whether `path` belongs to an ingest protocol: `INGEST_PATHS`, or anything under
    `ES_PREFIX` (Elasticsearch's paths carry an index name and probe many URLs)."""
    return path in INGEST_PATHS or path == ES_PREFIX or path.startswith(ES_PREFIX + "/")
