"""Settings of the Log API, the load balancer and the web page, read from the environment.

Nothing is read at import time. Building an object reads the environment then
(`LogApiSettings()`), and arguments win over it (`LogApiSettings(port=0)`).

Every setting has an `AYGOLOG_` name. The seed's .NET and Vite names work too, so its `docker run`
lines keep working; **when both are set, the `AYGOLOG_` name wins**:

| setting                 | aygolog name             | seed name                               |
|-------------------------|--------------------------|-----------------------------------------|
| Redis address           | `AYGOLOG_REDIS_URL`      | `ConnectionStrings__Redis`              |
| instance name           | `AYGOLOG_INSTANCE_NAME`  | `ServiceRegistration__ServiceName`      |
| LB URL (instance side)  | `AYGOLOG_LB_URL`         | `ServiceRegistration__LoadBalancerUrl`  |
| advertised host         | `AYGOLOG_ADVERTISE_HOST` | `ServiceRegistration__ServiceIpAddress` |
| advertised port         | `AYGOLOG_ADVERTISE_PORT` | `ServiceRegistration__ServicePort`      |
| register with the LB    | `AYGOLOG_AUTO_REGISTER`  | `ServiceRegistration__AutoRegister`     |
| listen address          | `AYGOLOG_HOST`, `_PORT`  | `ASPNETCORE_URLS` (`http://+:8080`)     |
| web page: the LB's URL  | `AYGOLOG_LB_URL`         | `VITE_API_BASE_URL` + `VITE_API_PORT`   |

Names are case-insensitive, as in .NET; an empty variable counts as unset; `ASPNETCORE_ENVIRONMENT`
is ignored. A validation error names the variable that held the bad value. Durations are seconds.
Every setting of every service is listed in docs/configuration.md.

This module must not import redis-py (an optional dependency), so the parsing of Redis addresses
lives here and `aygolog.redis` builds clients from it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, get_args
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = [
    "ApiScope",
    "LoadBalancerSettings",
    "LogApiSettings",
    "RedisSettings",
    "RedisTarget",
    "ServiceRegistrationSettings",
    "StrategyName",
    "UISettings",
    "parse_redis_url",
]

# ---------------------------------------------------------------------------------------------
# Hosts and URLs

_HOSTNAME: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_ANY_HOST: Final = frozenset({"+", "*", "0.0.0.0", "", "::"})


def _is_host(host: str) -> bool:
    """Whether `host` is a host name or an IP address (IPv6 without brackets)."""
    if _HOSTNAME.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _netloc(host: str, port: int | None) -> str:
    """`host:port`, with an IPv6 address in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _http_url(value: str) -> str:
    """An http(s) URL from `host`, `host:port` or a URL, without a trailing slash."""
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if not parts.hostname or not _is_host(parts.hostname):
        raise ValueError(f"{value!r} has no valid host name or IP address")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError(f"{value!r} must not carry credentials, a query or a fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has a bad port") from None
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))


def _with_port(url: str, port: int) -> str:
    """`url` with `port`; an error if it already names another port."""
    parts = urlsplit(url)
    if parts.port is not None and parts.port != port:
        raise ValueError(
            f"VITE_API_BASE_URL {url!r} has port {parts.port}; VITE_API_PORT is {port}"
        )
    netloc = _netloc(parts.hostname or "", port)
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _aspnetcore_listen(value: str) -> tuple[str, int]:
    """The host and port to listen on from ASP.NET Core's `URLS` (`http://+:8080;https://...`)."""
    for entry in value.split(";"):
        entry = entry.strip()
        if not entry.lower().startswith("http://"):
            continue
        rest = entry[len("http://") :].split("/", 1)[0]
        if rest.startswith("["):
            host, _, port_text = rest[1:].partition("]")
            port_text = port_text.removeprefix(":")
        else:
            host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
        port = 80
        if port_text:
            if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
                raise ValueError(f"bad port {port_text!r} in {entry!r}")
            port = int(port_text)
        if host in _ANY_HOST:
            host = "::" if host == "::" else "0.0.0.0"
        elif not _is_host(host):
            raise ValueError(f"bad host {host!r} in {entry!r}")
        return host, port
    raise ValueError(
        f"no http:// address in {value!r}; aygolog serves plain HTTP (put TLS in front of it)"
    )


def _split_list(value: object) -> object:
    """A comma-separated string or a JSON list as a list of stripped, non-empty strings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _reachable_host(listen_host: str) -> str:
    """An address other machines can use for this one, given the address it listens on."""
    if listen_host not in _ANY_HOST:
        return listen_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# Redis addresses

RedisScheme = Literal["redis", "rediss", "unix", "redis+sentinel"]
_SCHEMES: Final[tuple[str, ...]] = get_args(RedisScheme)
_EXPECTED: Final = (
    "expected host:port, a redis://, rediss://, unix:// or redis+sentinel:// URL,"
    " or a StackExchange.Redis string (host:port,password=...,ssl=true)"
)
# Query options handed to redis-py as they are (it parses their values); others would only fail
# later, at the first command, with a TypeError.
_URL_OPTIONS: Final = frozenset(
    {
        "client_name",
        "health_check_interval",
        "max_connections",
        "protocol",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_timeout",
    }
)
_TLS_OPTIONS: Final = frozenset(
    {
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_check_hostname",
        "ssl_keyfile",
    }
)
# StackExchange.Redis options that only tune the .NET client: accepted and ignored.
_SE_IGNORED: Final = frozenset(
    {
        "abortconnect",
        "allowadmin",
        "asynctimeout",
        "configcheckseconds",
        "connectretry",
        "connecttimeout",
        "keepalive",
        "name",
        "resolvedns",
        "synctimeout",
        "version",
    }
)
_SE_KNOWN: Final = ("password", "user", "ssl", "defaultDatabase", "serviceName")
_PASSWORD_OPTION: Final = re.compile(r"(?i)(password=)[^,&]*")
_KEY_PREFIX: Final = re.compile(r"[A-Za-z0-9._:/@-]{1,100}")


class _Bad(ValueError):
    """One reason why a Redis address is refused (the caller adds the address)."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis address: which server(s), which database, and how to log in."""

    scheme: RedisScheme
    hosts: tuple[tuple[str, int], ...] = ()
    """(host, port): one server, or the sentinels of a redis+sentinel address; none for unix."""
    path: str | None = None
    """The socket of a unix:// address."""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    service_name: str | None = None
    """The master's name, for Sentinel."""
    options: tuple[tuple[str, str], ...] = ()
    """Query options passed on to redis-py (e.g. `ssl_cert_reqs=none`)."""

    @property
    def url(self) -> str:
        """The address as a URL redis-py understands (Sentinel: our own form)."""
        secret = None if self.password is None else quote(self.password, safe="")
        return self._format(secret)

    @property
    def redacted_url(self) -> str:
        """`url` with the password replaced by `***`, for logs and error messages."""
        return self._format(None if self.password is None else "***")

    def _format(self, secret: str | None) -> str:
        creds = ""
        if self.username is not None or secret is not None:
            creds = quote(self.username or "", safe="")
            creds += "" if secret is None else f":{secret}"
            creds += "@"
        hosts = ",".join(_netloc(host, port) for host, port in self.hosts)
        if self.scheme == "unix":
            query = urlencode((("db", str(self.db)), *self.options))
            return f"unix://{creds}{self.path}?{query}"
        query = f"?{urlencode(self.options)}" if self.options else ""
        if self.scheme == "redis+sentinel":
            return f"redis+sentinel://{creds}{hosts}/{self.service_name}/{self.db}"
        return f"{self.scheme}://{creds}{hosts}/{self.db}{query}"


def parse_redis_url(value: str) -> RedisTarget:
    """Parse a Redis address in any form aygolog accepts.

    The forms: `host`, `host:port`, `[::1]:6379` (the seed's form); `redis://` and `rediss://`
    (TLS) URLs with `user:password@` and a database (`/2`); `unix:///path/redis.sock?db=2`;
    `redis+sentinel://host:port[,host2:port2]/master_name[/db]`; and the StackExchange.Redis
    string of .NET deployments: `host:port,password=...,ssl=true,defaultDatabase=2`
    (`serviceName=` makes it Sentinel; client-only options such as `abortConnect` are ignored).

    Raises:
        ValueError: the value is none of these; the message says why, without the password.
    """
    text = value.strip()
    try:
        if not text:
            raise _Bad("the address is empty")
        if "://" in text:
            return _parse_url(text)
        return _parse_plain(text)
    except _Bad as exc:
        raise ValueError(f"invalid Redis address {_redact(text)!r}: {exc}; {_EXPECTED}") from None


def _redact(text: str) -> str:
    """`text` with any password in it replaced by `***` (it may not even parse)."""
    text = _PASSWORD_OPTION.sub(r"\1***", text)
    head, sep, rest = text.partition("://")
    if not sep:
        head, rest = "", text
    authority, slash, tail = rest.partition("/")
    creds, _, hosts = authority.rpartition("@")
    if ":" in creds:
        authority = f"{creds.partition(':')[0]}:***@{hosts}"
    return f"{head}{sep}{authority}{slash}{tail}"


def _parse_endpoint(text: str, default_port: int) -> tuple[str, int]:
    """(host, port) from `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address."""
    if "@" in text:
        raise _Bad("credentials need a URL (redis://user:password@host:port) or ,password=...")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not _is_v6(host):
            raise _Bad(f"{text!r} is not a valid [IPv6] address")
        if rest and not rest.startswith(":"):
            raise _Bad(f"unexpected {rest!r} after the address")
        return host, _port(rest[1:]) if rest else default_port
    if text.count(":") > 1:
        if not _is_v6(text):
            raise _Bad(f"{text!r} is not a valid address (put an IPv6 address in brackets)")
        return text, default_port
    host, colon, port_text = text.partition(":")
    if not host or not _is_host(host):
        raise _Bad(f"{host!r} is not a host name or IP address")
    return host, _port(port_text) if colon else default_port


def _is_v6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise _Bad(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def _db(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise _Bad(f"database {text!r} is not a number")
    return int(text)


def _parse_url(text: str) -> RedisTarget:
    scheme_text, _, rest = text.partition("://")
    scheme = scheme_text.lower()
    if scheme not in _SCHEMES:
        raise _Bad(f"unsupported scheme {scheme_text!r}")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise _Bad("a fragment (#...) is not allowed")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    creds, _, hostpart = netloc.rpartition("@")
    user_text, _, password_text = creds.partition(":")
    username, password = unquote(user_text) or None, unquote(password_text) or None
    db: int | None = None
    options: list[tuple[str, str]] = []
    for name, option in parse_qsl(query, keep_blank_values=True):
        if name == "db":
            db = _db(option)
        elif name in ("username", "password"):
            if (username if name == "username" else password) is not None:
                raise _Bad(f"the {name} is given twice")
            if name == "username":
                username = option or None
            else:
                password = option or None
        elif name in _URL_OPTIONS or (name in _TLS_OPTIONS and scheme == "rediss"):
            options.append((name, option))
        else:
            raise _Bad(f"unknown option {name!r}")

    if scheme == "unix":
        if hostpart:
            raise _Bad("a unix:// URL has no host (unix:///path/to/redis.sock)")
        if not slash or not path:
            raise _Bad("no socket path (unix:///path/to/redis.sock)")
        return RedisTarget(
            scheme="unix",
            path=f"/{unquote(path)}",
            db=db or 0,
            username=username,
            password=password,
            options=tuple(options),
        )

    if not hostpart:
        raise _Bad("no host")
    endpoints = hostpart.split(",")
    sentinel = scheme == "redis+sentinel"
    if len(endpoints) > 1 and not sentinel:
        raise _Bad("only a redis+sentinel:// URL lists several hosts")
    hosts = tuple(_parse_endpoint(e, 26379 if sentinel else 6379) for e in endpoints)
    segments = path.split("/") if path else []
    if sentinel:
        if options:
            raise _Bad("a redis+sentinel:// URL takes no options")
        if not segments or not segments[0] or len(segments) > 2:
            raise _Bad("expected redis+sentinel://host:port[,host:port]/master_name[/db]")
        path_db = _db(segments[1]) if len(segments) == 2 else None
        return RedisTarget(
            scheme="redis+sentinel",
            hosts=hosts,
            db=_one_db(path_db, db),
            username=username,
            password=password,
            service_name=unquote(segments[0]),
        )
    if len(segments) > 1:
        raise _Bad(f"unexpected path {'/' + path!r} (only a database number: /0)")
    path_db = _db(segments[0]) if segments and segments[0] else None
    return RedisTarget(
        scheme="rediss" if scheme == "rediss" else "redis",
        hosts=hosts,
        db=_one_db(path_db, db),
        username=username,
        password=password,
        options=tuple(options),
    )


def _one_db(in_path: int | None, in_query: int | None) -> int:
    if in_path is not None and in_query is not None and in_path != in_query:
        raise _Bad(f"two databases: /{in_path} and ?db={in_query}")
    return in_path if in_path is not None else in_query or 0


def _parse_plain(text: str) -> RedisTarget:
    """`host[:port]`, or a StackExchange.Redis string: endpoints and `key=value` options."""
    endpoints: list[str] = []
    opts: dict[str, str] = {}
    for raw in text.split(","):
        part = raw.strip()
        if "=" in part:
            key, _, option = part.partition("=")
            opts[key.strip().lower()] = option.strip()
        elif part:
            endpoints.append(part)
    if not endpoints:
        raise _Bad("no host")
    service_name = opts.pop("servicename", None) or None
    password = opts.pop("password", None) or None
    username = opts.pop("user", None) or None
    ssl_text = opts.pop("ssl", "false").lower()
    if ssl_text not in ("true", "false"):
        raise _Bad(f"ssl={ssl_text!r} is neither true nor false")
    db = _db(opts.pop("defaultdatabase", "0"))
    unknown = sorted(set(opts) - _SE_IGNORED)
    if unknown:
        raise _Bad(f"unknown option {unknown[0]!r} (known: {', '.join(_SE_KNOWN)})")
    if service_name is not None:
        if ssl_text == "true":
            raise _Bad("ssl=true with Sentinel is not supported")
        hosts = tuple(_parse_endpoint(e, 26379) for e in endpoints)
        return RedisTarget(
            scheme="redis+sentinel",
            hosts=hosts,
            db=db,
            username=username,
            password=password,
            service_name=service_name,
        )
    if len(endpoints) > 1:
        raise _Bad(
            f"{len(endpoints)} endpoints: give one (a cluster finds its other nodes by itself),"
            " or serviceName=... for Sentinel"
        )
    return RedisTarget(
        scheme="rediss" if ssl_text == "true" else "redis",
        hosts=(_parse_endpoint(endpoints[0], 6379),),
        db=db,
        username=username,
        password=password,
    )


def _check_key_prefix(prefix: str) -> str:
    """`prefix` if it can start every key of a deployment (also used by `aygolog.redis.KeySpace`).

    Braces would break the hash tag and glob characters would break SCAN patterns, so only
    letters, digits and `. _ : / @ -` are allowed.
    """
    if not _KEY_PREFIX.fullmatch(prefix):
        raise ValueError(
            f"key prefix {prefix!r} must be 1-100 characters from letters, digits and . _ : / @ -"
        )
    return prefix


# ---------------------------------------------------------------------------------------------
# Settings


class _EnvSource(EnvSettingsSource):
    """The environment, each value keyed by the variable it came from.

    pydantic-settings keys a value by the field's first alias whichever variable held it, so a bad
    `ConnectionStrings__Redis` would be reported as `AYGOLOG_REDIS_URL`; this keeps the real name.
    """

    def _get_resolved_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.get_field_value(field, field_name)


class _Settings(BaseSettings):
    """Common configuration: `AYGOLOG_` names, case-insensitive, empty means unset."""

    model_config = SettingsConfigDict(
        env_prefix="AYGOLOG_",
        case_sensitive=False,
        env_ignore_empty=True,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls), dotenv_settings, file_secret_settings)


class RedisSettings(_Settings):
    """How to reach Redis. `url=None` means: run a private server (`aygolog.embedded`)."""

    model_config = SettingsConfigDict(env_prefix="AYGOLOG_REDIS_", hide_input_in_errors=True)

    url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AYGOLOG_REDIS_URL", "ConnectionStrings__Redis"),
    )
    """Any form `parse_redis_url` accepts, stored as a URL (`host:port` -> `redis://host:port/0`)."""
    prefix: str = Field(default="aygolog", validation_alias="AYGOLOG_REDIS_PREFIX")
    """Starts every key, so several deployments can share one Redis."""
    cluster: bool = Field(default=False, validation_alias="AYGOLOG_REDIS_CLUSTER")
    connect_timeout: float = Field(
        default=2.0, gt=0, validation_alias="AYGOLOG_REDIS_CONNECT_TIMEOUT"
    )
    socket_timeout: float = Field(
        default=5.0, gt=0, validation_alias="AYGOLOG_REDIS_SOCKET_TIMEOUT"
    )
    """Longest wait for a reply; blocking reads (XREAD BLOCK) must block for less."""
    # -- connection pool (a request waits for a free connection instead of failing at once) --
    max_connections: int = Field(
        default=100, ge=1, validation_alias="AYGOLOG_REDIS_MAX_CONNECTIONS"
    )
    """Most connections one process opens to Redis; more requests wait for a free one."""
    pool_timeout: float = Field(default=2.0, gt=0, validation_alias="AYGOLOG_REDIS_POOL_TIMEOUT")
    """Longest wait for a free pooled connection before the request fails (a 503)."""

    @field_validator("url")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        return None if value is None else parse_redis_url(value).url

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return _check_key_prefix(value)

    @model_validator(mode="after")
    def _check_cluster(self) -> Self:
        if self.cluster:
            target = None if self.url is None else parse_redis_url(self.url)
            if target is None or target.scheme not in ("redis", "rediss") or target.db != 0:
                raise ValueError(
                    "AYGOLOG_REDIS_CLUSTER needs a redis:// or rediss:// address with database 0"
                )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name == "url" and isinstance(value, str):
                yield name, _redact(value)
            else:
                yield name, value


def _services_redis(value: RedisSettings) -> RedisSettings:
    """The services need one Redis (or a Sentinel-managed primary): refuse a cluster at start."""
    if value.cluster:
        raise ValueError(
            "AYGOLOG_REDIS_CLUSTER is not supported by the Log API and the load balancer (their"
            " Lua scripts and streams need one primary): use one Redis, Redis Sentinel"
            " (redis+sentinel://), or a managed Redis with cluster mode disabled"
        )
    return value


class ServiceRegistrationSettings(_Settings):
    """How a Log API instance registers with the load balancer (the seed's ServiceRegistration)."""

    lb_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AYGOLOG_LB_URL", "ServiceRegistration__LoadBalancerUrl"),
    )
    """The load balancer; `host:port` means `http://host:port`."""
    auto_register: bool = Field(
        default=True,
        validation_alias=AliasChoices("AYGOLOG_AUTO_REGISTER", "ServiceRegistration__AutoRegister"),
    )
    """Register on start-up, heartbeat, deregister on shutdown. Needs `lb_url`."""
    advertise_host: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "AYGOLOG_ADVERTISE_HOST", "ServiceRegistration__ServiceIpAddress"
        ),
    )
    """The address the LB should use; by default the listen address, or this host's IP."""
    advertise_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("AYGOLOG_ADVERTISE_PORT", "ServiceRegistration__ServicePort"),
    )
    """The port the LB should use (e.g. a published Docker port); by default the listen port."""
    advertise_url: str | None = Field(default=None, validation_alias="AYGOLOG_ADVERTISE_URL")
    """The whole URL the LB should use; wins over `advertise_host` and `advertise_port`."""
    registration_token: SecretStr | None = Field(
        default=None, validation_alias="AYGOLOG_REGISTRATION_TOKEN"
    )
    """Sent with (de)registrations and heartbeats; the LB's `registration_token`."""
    heartbeat_interval: float = Field(
        default=2.0, gt=0, validation_alias="AYGOLOG_HEARTBEAT_INTERVAL"
    )

    @field_validator("lb_url", "advertise_url")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("advertise_host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is not None and not _is_host(value.strip("[]")):
            raise ValueError(f"{value!r} is not a host name or IP address")
        return None if value is None else value.strip("[]")

    @model_validator(mode="after")
    def _check_lb_url(self) -> Self:
        if "auto_register" in self.model_fields_set and self.auto_register and not self.lb_url:
            raise ValueError(
                "registration is switched on but no load balancer URL is set"
                " (AYGOLOG_LB_URL or ServiceRegistration__LoadBalancerUrl)"
            )
        return self

    @property
    def enabled(self) -> bool:
        """Whether the instance registers: `auto_register` and an LB URL are both set."""
        return self.auto_register and self.lb_url is not None

    def advertised_url(self, *, listen_host: str = "127.0.0.1", listen_port: int = 8080) -> str:
        """The URL the load balancer should send requests to.

        `advertise_url` if set, else `http://{advertise_host}:{advertise_port}`, each defaulting to
        the listen address (an any-address such as 0.0.0.0 becomes this host's IP, which may need
        a DNS look-up). Pass the port actually bound when listening on port 0.
        """
        if self.advertise_url is not None:
            return self.advertise_url
        host = self.advertise_host or _reachable_host(listen_host)
        return f"http://{_netloc(host, self.advertise_port or listen_port)}"


ApiScope = Literal["read", "write", "read+write"]
"""What an API key may do on `/api/log*`: read (GET, HEAD), write (POST and other methods)."""
_SCOPES: Final[dict[str, ApiScope]] = {
    "read": "read",
    "write": "write",
    "read+write": "read+write",
    "write+read": "read+write",
    "rw": "read+write",
}
_API_KEY: Final = re.compile(r"[\x21-\x7e]{1,256}")


class _ServerSettings(_Settings):
    """Where a service listens: `AYGOLOG_HOST`/`AYGOLOG_PORT`, else the seed's `ASPNETCORE_URLS`.

    Errors do not quote the value given (it may hold API keys).
    """

    model_config = SettingsConfigDict(hide_input_in_errors=True)

    host: str = Field(default="127.0.0.1", validation_alias="AYGOLOG_HOST")
    """The address to listen on; 0.0.0.0 for all interfaces (e.g. in a container)."""
    port: int = Field(default=8080, ge=0, le=65535, validation_alias="AYGOLOG_PORT")
    aspnetcore_urls: str | None = Field(default=None, validation_alias="ASPNETCORE_URLS")
    """E.g. `http://+:8080`: the listen address when `host`/`port` are not set (`+`, `*`: all)."""
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="AYGOLOG_CORS_ORIGINS"
    )
    """Browser origins allowed to call the service: comma-separated or a JSON list; `*`: any;
    `none`: CORS off (the default of a Log API instance; the load balancer's default is `*`)."""
    api_keys: Annotated[dict[str, ApiScope], NoDecode] = Field(
        default_factory=dict, repr=False, validation_alias="AYGOLOG_API_KEYS"
    )
    """API keys for the `/api/log*` routes: `key:scope` entries, comma-separated (scope `read`,
    `write` or `read+write`), or a JSON object; empty: no key needed. The load balancer checks
    them and passes the key on; a Log API instance given the same keys checks them too, so going
    around the load balancer does not go around the keys."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        # All checks are here, before pydantic's own: its errors would quote the key.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                value = json.loads(text)
            else:
                entries: dict[str, object] = {}
                for number, entry in enumerate(text.split(","), 1):
                    key, colon, scope = entry.strip().rpartition(":")
                    if entry.strip() and not colon:
                        raise ValueError(f"entry {number} is not key:scope")
                    if colon:
                        entries[key.strip()] = scope.strip()
                value = entries
        if not isinstance(value, dict):
            raise ValueError("expected key:scope entries, comma-separated, or a JSON object")
        checked: dict[str, ApiScope] = {}
        for number, (key, scope) in enumerate(value.items(), 1):
            if not isinstance(key, str) or not _API_KEY.fullmatch(key) or "," in key:
                raise ValueError(
                    f"API key {number} must be 1-256 visible ASCII characters, without a comma"
                )
            known = _SCOPES.get(scope.strip().lower()) if isinstance(scope, str) else None
            if known is None:
                raise ValueError(
                    f"API key {number} has scope {scope!r}; expected read, write or read+write"
                )
            checked[key] = known
        return checked

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        host = value.strip().strip("[]")
        if not _is_host(host):
            raise ValueError(f"{value!r} is not a host name or IP address")
        return host

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        if [origin.strip().lower() for origin in value] == ["none"]:
            return []
        origins = []
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+/?", origin):
                raise ValueError(f"{origin!r} is not an origin (https://host[:port]), * or none")
            origins.append(origin.rstrip("/"))
        return origins

    @field_validator("aspnetcore_urls")
    @classmethod
    def _check_urls(cls, value: str | None) -> str | None:
        if value is not None:
            _aspnetcore_listen(value)
        return value

    @model_validator(mode="after")
    def _listen_from_aspnetcore(self) -> Self:
        if self.aspnetcore_urls is not None:
            host, port = _aspnetcore_listen(self.aspnetcore_urls)
            if "host" not in self.model_fields_set:
                self.host = host
            if "port" not in self.model_fields_set:
                self.port = port
        return self


_INSTANCE_NAME: Final = re.compile(r"[!-~]{1,128}")


class LogApiSettings(_ServerSettings):
    """Settings of one Log API instance."""

    instance_name: str = Field(
        default="",
        validation_alias=AliasChoices("AYGOLOG_INSTANCE_NAME", "ServiceRegistration__ServiceName"),
    )
    """Names this instance in stored entries and in the registry; default `hostname:port`."""
    redis: RedisSettings = Field(default_factory=RedisSettings)
    registration: ServiceRegistrationSettings = Field(default_factory=ServiceRegistrationSettings)
    retention_max_entries: int = Field(
        default=1_000_000, ge=0, validation_alias="AYGOLOG_RETENTION_MAX_ENTRIES"
    )
    """Keep about this many entries (`MAXLEN ~`); 0 = no limit."""
    retention_max_age: float = Field(
        default=7 * 24 * 3600.0, ge=0, validation_alias="AYGOLOG_RETENTION_MAX_AGE"
    )
    """Drop entries older than this many seconds (`MINID`); 0 = no limit."""
    max_batch_items: int = Field(default=10_000, ge=1, validation_alias="AYGOLOG_MAX_BATCH_ITEMS")
    """At most this many entries in one batch request."""
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, validation_alias="AYGOLOG_MAX_BODY_BYTES"
    )
    """At most this many bytes in one request body."""
    # -- the server process (`aygolog api`) --
    workers: int = Field(default=1, ge=1, le=256, validation_alias="AYGOLOG_WORKERS")
    """granian worker processes; each runs the whole app (its own tail reader, registration
    heartbeat and metrics)."""
    backpressure: int = Field(default=10_000, ge=1, validation_alias="AYGOLOG_BACKPRESSURE")
    """Most requests one worker serves at once, live tails included (granian's backpressure):
    above it new requests, `/health` too, wait. Keep it above the live tails you expect."""

    # -- reads: what one page and one instance may take out of Redis at once --
    max_page_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, validation_alias="AYGOLOG_MAX_PAGE_BYTES"
    )
    """A page of results ends early (with a `next_cursor`) once it holds this many bytes."""
    max_concurrent_reads: int = Field(
        default=8, ge=1, validation_alias="AYGOLOG_MAX_CONCURRENT_READS"
    )
    """At most this many queries run against the store at once on one instance."""
    read_queue_timeout: float = Field(
        default=2.0, ge=0, validation_alias="AYGOLOG_READ_QUEUE_TIMEOUT"
    )
    """Seconds a query waits for its turn before it is answered 503 with Retry-After."""

    @field_validator("redis")
    @classmethod
    def _check_redis(cls, value: RedisSettings) -> RedisSettings:
        return _services_redis(value)

    @field_validator("instance_name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if value and not _INSTANCE_NAME.fullmatch(value):
            raise ValueError(f"{value!r}: an instance name is 1-128 visible ASCII characters")
        return value

    @model_validator(mode="after")
    def _default_name(self) -> Self:
        if not self.instance_name:
            self.instance_name = f"{socket.gethostname()}:{self.port}"
        return self

    def advertised_url(self, bound_port: int | None = None) -> str:
        """The URL the LB should use for this instance (see `ServiceRegistrationSettings`)."""
        return self.registration.advertised_url(
            listen_host=self.host, listen_port=bound_port or self.port
        )


StrategyName = Literal["round_robin", "random", "least_outstanding", "p2c", "weighted"]
_STRATEGY_ALIASES: Final = {"power_of_two_choices": "p2c", "weighted_round_robin": "weighted"}
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# -- registration networks (SSRF defaults) --
DEFAULT_REGISTRATION_NETWORKS: Final = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "::1/128",
    "fc00::/7",
)
"""Private and loopback ranges: who may register, and where, unless configured otherwise."""


def _default_registration_networks() -> list[IPNetwork]:
    return [ipaddress.ip_network(n) for n in DEFAULT_REGISTRATION_NETWORKS]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


class LoadBalancerSettings(_ServerSettings):
    """Settings of the load balancer.

    Registration needs `registration_token` (the same on every instance): an open registration
    endpoint would let anyone take over traffic. `insecure_open_registration=True` opts out.
    """

    redis: RedisSettings = Field(default_factory=RedisSettings)
    strategy: StrategyName = Field(default="p2c", validation_alias="AYGOLOG_STRATEGY")
    """round_robin, random, least_outstanding, p2c (power of two choices) or weighted."""
    registration_token: SecretStr | None = Field(
        default=None, validation_alias="AYGOLOG_REGISTRATION_TOKEN"
    )
    insecure_open_registration: bool = Field(
        default=False, validation_alias="AYGOLOG_INSECURE_OPEN_REGISTRATION"
    )
    heartbeat_ttl: float = Field(default=6.0, gt=0, validation_alias="AYGOLOG_HEARTBEAT_TTL")
    """An instance is alive while its last heartbeat is younger than this."""
    registration_allowed_networks: Annotated[list[IPNetwork], NoDecode] = Field(
        default_factory=_default_registration_networks,
        validation_alias="AYGOLOG_REGISTRATION_ALLOWED_NETWORKS",
    )
    """CIDR networks (comma-separated or a JSON list) allowed to register; default (and when
    empty): the private and loopback ranges (`DEFAULT_REGISTRATION_NETWORKS`); `0.0.0.0/0,::/0`
    for any. Both the registration request's peer address and the registered URL's host (a name
    must resolve only to addresses inside) must be in one of them, else 403. Link-local
    (incl. the cloud metadata addresses), unspecified, broadcast and multicast hosts are refused
    whatever this says."""
    connect_timeout: float = Field(default=1.0, gt=0, validation_alias="AYGOLOG_CONNECT_TIMEOUT")
    """Seconds to open a connection to an instance."""
    response_timeout: float = Field(default=30.0, gt=0, validation_alias="AYGOLOG_RESPONSE_TIMEOUT")
    """Seconds to wait for an instance's response headers, and between body chunks (not SSE)."""
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, validation_alias="AYGOLOG_MAX_BODY_BYTES"
    )
    """Largest request body the proxy accepts (413 beyond); the same variable as the Log API's."""
    max_retries: int = Field(default=2, ge=0, le=10, validation_alias="AYGOLOG_MAX_RETRIES")
    """Extra attempts of one request on other instances, at most."""
    retry_budget_percent: float = Field(
        default=20.0, ge=0, validation_alias="AYGOLOG_RETRY_BUDGET_PERCENT"
    )
    """Retries may add at most this percentage of extra requests over the budget window..."""
    retry_budget_min_per_second: float = Field(
        default=3.0, ge=0, validation_alias="AYGOLOG_RETRY_BUDGET_MIN_PER_SECOND"
    )
    """...plus this many retries per second, so that a quiet load balancer can still retry."""
    retry_budget_window: float = Field(
        default=10.0, gt=0, validation_alias="AYGOLOG_RETRY_BUDGET_WINDOW"
    )
    """The sliding window of the retry budget, in seconds."""
    health_check_interval: float = Field(
        default=2.0, ge=0, validation_alias="AYGOLOG_HEALTH_CHECK_INTERVAL"
    )
    """Seconds between active probes of each instance's `/health`; 0 turns probing off."""
    health_check_timeout: float = Field(
        default=1.0, gt=0, validation_alias="AYGOLOG_HEALTH_CHECK_TIMEOUT"
    )
    """A probe not answered within this many seconds has failed."""
    healthy_threshold: int = Field(default=2, ge=1, validation_alias="AYGOLOG_HEALTHY_THRESHOLD")
    """Passed probes in a row that make an unhealthy instance healthy again."""
    unhealthy_threshold: int = Field(
        default=3, ge=1, validation_alias="AYGOLOG_UNHEALTHY_THRESHOLD"
    )
    """Failed probes in a row that make an instance unhealthy (no new requests)."""
    ejection_base: float = Field(default=5.0, gt=0, validation_alias="AYGOLOG_EJECTION_BASE")
    """Seconds a failing instance (connect error, or gateway failures: reset, timeout, 502, 504)
    is ejected the first time. 4xx, 500 and 503 answers never eject."""
    ejection_max: float = Field(default=300.0, gt=0, validation_alias="AYGOLOG_EJECTION_MAX")
    """The longest ejection; repeated ejections double up to it."""
    max_ejected_percent: float = Field(
        default=50.0, ge=0, le=100, validation_alias="AYGOLOG_MAX_EJECTED_PERCENT"
    )
    """At most this percentage of the live instances ejected at once (at least one, unless 0);
    with none routable, requests go to every live instance (panic mode)."""
    # -- passive health (issue 15) --
    ejection_consecutive_failures: int = Field(
        default=3, ge=1, validation_alias="AYGOLOG_EJECTION_CONSECUTIVE_FAILURES"
    )
    """Gateway failures in a row (reset, response timeout, invalid response, 502, 504) that eject
    an instance; a connect failure ejects at once."""
    registry_poll_interval: float = Field(
        default=1.0, gt=0, validation_alias="AYGOLOG_REGISTRY_POLL_INTERVAL"
    )
    """Seconds between full reloads of the registry (the safety net under its change events)."""

    # -- the data plane: CORS and client limits (issue 15) --
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], validation_alias="AYGOLOG_CORS_ORIGINS"
    )
    """Browser origins allowed on the log routes (`/api/log`, `/api/logs`, `/api/logs/...`):
    `*` (the default, as the seed's LB: its React page is served from another origin), a list
    (comma-separated or JSON), or `none` to turn CORS off. Never the registration API."""
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, validation_alias="AYGOLOG_MAX_HEADER_BYTES"
    )
    """Largest request head (request line and headers), checked on the bytes received; 431."""
    max_request_line_bytes: int = Field(
        default=16 * 1024, ge=256, validation_alias="AYGOLOG_MAX_REQUEST_LINE_BYTES"
    )
    """Largest request line (method, URL, version); 414 beyond."""
    max_header_line_bytes: int = Field(
        default=16 * 1024, ge=256, validation_alias="AYGOLOG_MAX_HEADER_LINE_BYTES"
    )
    """Largest single header line; 431 beyond."""
    client_header_timeout: float = Field(
        default=10.0, gt=0, validation_alias="AYGOLOG_CLIENT_HEADER_TIMEOUT"
    )
    """Seconds a request's head may take to arrive whole, from its first byte; 408 beyond."""
    client_body_timeout: float = Field(
        default=60.0, gt=0, validation_alias="AYGOLOG_CLIENT_BODY_TIMEOUT"
    )
    """Seconds a request's body may take to arrive whole, from the end of its head; 408 beyond."""
    keepalive_timeout: float = Field(
        default=75.0, gt=0, validation_alias="AYGOLOG_KEEPALIVE_TIMEOUT"
    )
    """Seconds an idle client connection (between requests) is kept open."""
    # -- end of the client limits --

    # -- every core and TLS (issue 16) --
    workers: int = Field(
        default_factory=usable_cpus, ge=1, le=256, validation_alias="AYGOLOG_LB_WORKERS"
    )
    """Worker processes, each a whole load balancer on the same port (SO_REUSEPORT); default:
    the CPUs this process may use. 1: a single process, no supervisor. Not `AYGOLOG_WORKERS`,
    which is the Log API's (`aygolog up` gives both the same environment)."""
    tls_cert: Path | None = Field(default=None, validation_alias="AYGOLOG_TLS_CERT")
    """PEM certificate chain (the server's certificate first): with `tls_key`, clients connect
    over TLS (HTTP/1.1, TLS 1.2 or later), the control plane included."""
    tls_key: Path | None = Field(default=None, validation_alias="AYGOLOG_TLS_KEY")
    """PEM private key of `tls_cert` (unencrypted)."""
    # -- end of every core and TLS --

    @field_validator("redis")
    @classmethod
    def _check_redis(cls, value: RedisSettings) -> RedisSettings:
        return _services_redis(value)

    @field_validator("registration_allowed_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        value = _split_list(value)
        if not isinstance(value, list):
            return value
        networks: list[object] = []
        for item in value:
            if isinstance(item, str):
                try:
                    networks.append(ipaddress.ip_network(item.strip(), strict=False))
                except ValueError:
                    raise ValueError(
                        f"{item!r} is not a network (CIDR, e.g. 10.0.0.0/8) or IP address"
                    ) from None
            else:
                networks.append(item)
        return networks or _default_registration_networks()

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_name(cls, value: object) -> object:
        if isinstance(value, str):
            key = value.strip().lower().replace("-", "_")
            return _STRATEGY_ALIASES.get(key, key)
        return value

    @field_validator("registration_token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("the registration token is blank")
        return value

    @model_validator(mode="after")
    def _check_ejection(self) -> Self:
        if self.ejection_max < self.ejection_base:
            raise ValueError(
                f"AYGOLOG_EJECTION_MAX ({self.ejection_max:g} s) is shorter than"
                f" AYGOLOG_EJECTION_BASE ({self.ejection_base:g} s)"
            )
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = (
                ("AYGOLOG_TLS_CERT (--tls-cert)", "AYGOLOG_TLS_KEY (--tls-key)")
                if self.tls_key is None
                else ("AYGOLOG_TLS_KEY (--tls-key)", "AYGOLOG_TLS_CERT (--tls-cert)")
            )
            raise ValueError(f"{given} is set but {missing} is not: TLS needs both")
        return self

    @model_validator(mode="after")
    def _require_token(self) -> Self:
        if self.registration_token is None and not self.insecure_open_registration:
            raise ValueError(
                "AYGOLOG_REGISTRATION_TOKEN is not set: set it here and on every Log API"
                " instance, or set AYGOLOG_INSECURE_OPEN_REGISTRATION=true to let anyone register"
            )
        return self


class UISettings(_Settings):
    """Settings of the web page; it reaches the system through the load balancer only."""

    model_config = SettingsConfigDict(env_prefix="AYGOLOG_UI_")

    host: str = Field(default="127.0.0.1", validation_alias="AYGOLOG_UI_HOST")
    port: int = Field(default=8000, ge=0, le=65535, validation_alias="AYGOLOG_UI_PORT")
    lb_url: str = Field(default="", validation_alias="AYGOLOG_LB_URL")
    """The load balancer; default from VITE_API_BASE_URL + VITE_API_PORT, else 127.0.0.1:8080."""
    vite_api_base_url: str | None = Field(default=None, validation_alias="VITE_API_BASE_URL")
    """The seed's LB address: a host/IP (`10.0.0.7`) or a URL (`https://lb.example.com`)."""
    vite_api_port: int | None = Field(
        default=None, ge=1, le=65535, validation_alias="VITE_API_PORT"
    )
    api_key: SecretStr | None = Field(default=None, validation_alias="AYGOLOG_API_KEY")
    """Sent to the load balancer when it requires API keys (`AYGOLOG_API_KEYS` there)."""

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        host = value.strip().strip("[]")
        if not _is_host(host):
            raise ValueError(f"{value!r} is not a host name or IP address")
        return host

    @field_validator("lb_url", "vite_api_base_url")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        return _http_url(value) if value else value

    @model_validator(mode="after")
    def _default_lb_url(self) -> Self:
        if not self.lb_url:
            base = self.vite_api_base_url or "http://127.0.0.1"
            if self.vite_api_port is not None:
                self.lb_url = _with_port(base, self.vite_api_port)
            else:
                self.lb_url = self.vite_api_base_url or "http://127.0.0.1:8080"
        return self
