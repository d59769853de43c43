"""Foreign ingest protocols: one pure module per protocol, wire bytes -> `NewLog`s and answers.

Each module decodes a request body (after its content encoding) into `NewLog`s and builds the
protocol's own answers; none does I/O. The Log API's routes (`aygolog.server.ingest`) read the
body, call the decoder, check the entries with the rules of `POST /api/logs`, store them with one
`append_many`, and send the answer the module built.

- `body.py`: what every protocol shares: `Content-Encoding` (gzip) with a bounded decompressed
  size, and `split_valid` (the entries that pass our rules, and why the others did not).
- `otlp.py`: OpenTelemetry OTLP/HTTP logs (`POST /v1/logs`), protobuf and JSON.
- `loki.py`: Loki push (`POST /loki/api/v1/push`), JSON and snappy-compressed protobuf, with
  `loki_push_pb2` compiled from `proto/loki_push.proto` (`make loki-proto`).
"""
