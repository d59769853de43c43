"""The load balancer's data plane: an HTTP/1.1 reverse proxy on asyncio (uvloop) and httptools.

`ProxyServer` accepts client connections and parses requests with httptools. For each request
`route(method, path)` says whether to proxy it; a proxied request goes to the instance the
`picker` chooses, over a pooled keep-alive connection (`aygolog.lb.upstream`); anything else is
handed, in-process, to an ASGI app (the LB's Litestar control plane: registration, `/health`,
`/metrics`). A raw server is used because the data plane must keep up with nginx: in this
project's calibration (ARCHITECTURE.md) a Litestar route in front of the same pooled sockets
reached 0.48x nginx's throughput, this design 0.66x.

The plain case costs no task, no future and no timer: a proxied request with an origin-form
target, for which an idle pooled connection to the instance picked exists, is written to the
instance from the client's parser callback (its head as received, with X-Forwarded-* and
X-Request-Id appended, when it has no header the proxy drops or sets), and a response that
arrives whole in one read goes to the client from the instance connection's callback, in one
write (its head as received, plus X-Served-By and X-Request-Id, when it has no header to drop or
change). Its `response_timeout` is checked by the server's sweeper, so a 504 there may come up to
a quarter of the timeout (at most 1 s) late. Anything else (a new connection to open, a body still
to come, SSE, a failure with its retries, the ASGI app, pipelined requests) goes on in a task.

Per client connection, requests are answered one at a time, in order (pipelining-safe). What a
client sends is bounded before httptools sees it (`aygolog.lb.framing`): the request line, each
header line and the whole head are limited on the bytes received (414/431 at once, however much
more the client sends), and each head goes to the parser whole. A request must arrive whole within
its deadlines, the head within `request_head_timeout` of its first byte and the body within
`request_body_timeout` of the end of the head (408 and close; no byte resets them); an idle
connection between requests is closed after `keep_alive_timeout`. Request
bodies are buffered up to `ProxyConfig.max_body_size` (413 beyond), which makes every request
replayable for a retry; responses are streamed as they arrive (SSE included), with back-pressure
from a slow client to the instance's connection. A client that closes its side of an event
stream has left: the proxy closes its connection to the instance at once (a quiet stream would
otherwise hold both until its next keep-alive comment).

Retries: a request is sent again to another instance (at most `max_retries` times, and only while
the `RetryBudget` allows) when the instance cannot have acted on it: no connection could be made,
or the connection failed before the request was fully sent and before any answer. After the
request was sent, only GET, HEAD and requests with an `Idempotency-Key` are retried. A failure on
a kept-alive connection before any answer (the instance closed it as we wrote) is first retried
once on a fresh connection to the same instance, under the same rule. Once response headers have
gone to the client nothing is retried: the client connection is cut instead.

Answers of the proxy itself: 502 (the instances failed), 503 with `Retry-After` (no instance to
send to), 504 (no response within `response_timeout`; never applied to SSE), 400/413/414/431 for
bad requests, 408 for slow ones, 417 for an `Expect` other than `100-continue`, 505 for an HTTP
version other than 1.0/1.1, 501 for a Transfer-Encoding other than chunked (HTTP/1.1 needs
exactly one Host; HTTP/1.0 may not use
Transfer-Encoding; headers the proxy relies on, such as Host, are never stripped by being named in
`Connection`), 401/403 for a missing or insufficient API key. Their JSON body is
`{"error": "...", "detail": []}`.

Optional, off by default and then costing one attribute test per request:

- API keys (`ProxyConfig.api_keys`): every proxied request needs `Authorization: Bearer <key>` or
  `X-Api-Key: <key>` (a dict lookup); 401 when missing or unknown, 403 when the key's scope does
  not allow the method (GET, HEAD and OPTIONS read; every other method writes). The key is
  passed on: instances given the same keys check them too (so going around the load balancer
  does not go around the keys).

CORS is on by default (`ProxyConfig.cors_origins`, `("*",)`: any origin, without credentials), on
the paths of `ProxyConfig.cors_paths` only (the log routes): a preflight (`OPTIONS` with `Origin`
and `Access-Control-Request-Method`) is answered by the proxy itself (204, or 403 for an origin not
allowed); proxied responses and the proxy's own errors to an allowed origin carry
`Access-Control-Allow-Origin` (`*`, or the origin when a list restricts them, then with
`Vary: Origin` merged into the instance's one `Vary`) and `Access-Control-Expose-Headers`; the
instances' own `Access-Control-*` headers are dropped. A preflight for any other path (the
registration API, the control plane) is refused with 403 and no CORS header. An empty
`cors_origins` turns CORS handling off (preflights are then proxied like any request).

What is where: `config` (ProxyConfig, the Picker and Target protocols, ProxyStats, RetryBudget),
`server` (ProxyServer and `serve`: the listener, the connections, the sweeper), `client` (one
client connection: limits and deadlines, parsing, the request queue, the proxy's own answers, the
ASGI hand-off), `relay` (proxying: attempts, retries, relaying the answer), `gate` (API keys and
CORS), `exchange` (the exchanges run in callbacks: with an instance, with the ASGI app), `wire`
(HTTP constants, `_Request` and small helpers). `relay` and `gate` are functions of the client
connection, bound as `_Client` methods.
"""

from aygolog.lb.proxy.config import (
    CLIENT_CLOSED_REQUEST,
    ASGIApp,
    Picker,
    ProxyConfig,
    ProxyStats,
    RetryBudget,
    Route,
    Target,
)
from aygolog.lb.proxy.server import ProxyServer, serve

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "ASGIApp",
    "Picker",
    "ProxyConfig",
    "ProxyServer",
    "ProxyStats",
    "RetryBudget",
    "Route",
    "Target",
    "serve",
]
