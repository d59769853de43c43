"""`aygolog.settings`: the seed's environment names, our `AYGOLOG_` names, and clear errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import get_args

import pytest
from pydantic import SecretStr, ValidationError

from aygolog.balancing import STRATEGIES
from aygolog.settings import (
    LoadBalancerSettings,
    LogApiSettings,
    RedisSettings,
    ServiceRegistrationSettings,
    StrategyName,
    UISettings,
)

_OURS = ("AYGOLOG_", "CONNECTIONSTRINGS__", "SERVICEREGISTRATION__", "VITE_", "ASPNETCORE_")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees variables of the machine it runs on (names are case-insensitive)."""
    for name in list(os.environ):
        if name.upper().startswith(_OURS):
            monkeypatch.delenv(name)


def _error(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return str(exc.value)


# --- import -------------------------------------------------------------------------------------


def test_import_reads_nothing_and_needs_no_redis() -> None:
    code = (
        "import sys, aygolog.settings as s\n"
        "assert 'redis' not in sys.modules, 'aygolog.settings imported redis'\n"
        "assert s.LogApiSettings is not None\n"
    )
    env = {
        **os.environ,
        "AYGOLOG_PORT": "not-a-port",
        "ConnectionStrings__Redis": "not a url:xx",
        "AYGOLOG_STRATEGY": "nonsense",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


# --- the seed's names ---------------------------------------------------------------------------


def test_log_api_from_the_seed_docker_run_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPNETCORE_ENVIRONMENT", "Development")
    monkeypatch.setenv("ConnectionStrings__Redis", "10.0.0.5:6379")
    monkeypatch.setenv("ServiceRegistration__ServiceName", "LogApi-Dev-instance-1")
    monkeypatch.setenv("ServiceRegistration__LoadBalancerUrl", "10.0.0.9:8080")
    monkeypatch.setenv("ServiceRegistration__ServicePort", "8081")
    monkeypatch.setenv("ServiceRegistration__ServiceIpAddress", "10.0.0.21")
    monkeypatch.setenv("ServiceRegistration__AutoRegister", "False")

    settings = LogApiSettings()

    assert settings.redis.url == "redis://10.0.0.5:6379/0"
    assert settings.instance_name == "LogApi-Dev-instance-1"
    registration = settings.registration
    assert registration.lb_url == "http://10.0.0.9:8080"
    assert registration.advertise_port == 8081
    assert registration.advertise_host == "10.0.0.21"
    assert registration.auto_register is False
    assert registration.enabled is False
    assert settings.advertised_url() == "http://10.0.0.21:8081"


@pytest.mark.parametrize("cls", [LogApiSettings, LoadBalancerSettings])
def test_the_services_refuse_a_redis_cluster(
    monkeypatch: pytest.MonkeyPatch, cls: type[LogApiSettings | LoadBalancerSettings]
) -> None:
    monkeypatch.setenv("AYGOLOG_REDIS_URL", "redis://10.0.0.5:6379/0")
    monkeypatch.setenv("AYGOLOG_REDIS_CLUSTER", "true")
    monkeypatch.setenv("AYGOLOG_REGISTRATION_TOKEN", "t")
    with pytest.raises(ValidationError, match="Sentinel"):
        cls()


def test_log_api_defaults() -> None:
    settings = LogApiSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.instance_name == f"{socket.gethostname()}:8080"
    assert settings.redis == RedisSettings(url=None, prefix="aygolog")
    assert settings.redis.url is None  # an embedded server
    assert settings.registration.auto_register is True
    assert settings.registration.enabled is False  # no LB URL: standalone
    assert settings.registration.heartbeat_interval == 2.0
    assert settings.retention_max_entries == 1_000_000
    assert settings.retention_max_age == 7 * 24 * 3600
    assert (settings.max_batch_items, settings.max_body_bytes) == (10_000, 10 * 1024 * 1024)
    assert settings.cors_origins == []
    assert settings.advertised_url() == "http://127.0.0.1:8080"
    assert settings.advertised_url(bound_port=43210) == "http://127.0.0.1:43210"


def test_seed_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTIONSTRINGS__REDIS", "redis-host:6380")
    monkeypatch.setenv("serviceregistration__servicename", "lower")
    settings = LogApiSettings()
    assert settings.redis.url == "redis://redis-host:6380/0"
    assert settings.instance_name == "lower"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("lb.internal", "http://lb.internal"),
        ("10.0.0.9:8080", "http://10.0.0.9:8080"),
        ("http://10.0.0.9:8080/", "http://10.0.0.9:8080"),
        ("https://lb.example.com/aygolog/", "https://lb.example.com/aygolog"),
        ("[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_load_balancer_url_forms(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("ServiceRegistration__LoadBalancerUrl", value)
    assert ServiceRegistrationSettings().lb_url == expected


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("FALSE", False)])
def test_auto_register_values(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("ServiceRegistration__LoadBalancerUrl", "lb:8080")
    monkeypatch.setenv("ServiceRegistration__AutoRegister", value)
    assert ServiceRegistrationSettings().auto_register is expected


def test_auto_register_asked_for_without_an_lb_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ServiceRegistration__AutoRegister", "true")
    with pytest.raises(ValidationError, match="no load balancer URL") as info:
        ServiceRegistrationSettings()
    assert "ServiceRegistration__LoadBalancerUrl" in _error(info)


@pytest.mark.parametrize(
    ("urls", "host", "port"),
    [
        ("http://+:8080", "0.0.0.0", 8080),
        ("http://*:5000", "0.0.0.0", 5000),
        ("http://0.0.0.0:81", "0.0.0.0", 81),
        ("http://[::]:8080", "::", 8080),
        ("http://localhost:5001", "localhost", 5001),
        ("http://+", "0.0.0.0", 80),
        ("https://+:8443;http://+:8080", "0.0.0.0", 8080),
        (" http://10.1.2.3:9000/ ", "10.1.2.3", 9000),
    ],
)
def test_aspnetcore_urls_is_the_default_listen_address(
    monkeypatch: pytest.MonkeyPatch, urls: str, host: str, port: int
) -> None:
    monkeypatch.setenv("ASPNETCORE_URLS", urls)
    for settings in (LogApiSettings(), LoadBalancerSettings(insecure_open_registration=True)):
        assert (settings.host, settings.port) == (host, port)


def test_our_listen_names_win_over_aspnetcore_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPNETCORE_URLS", "http://+:8080")
    monkeypatch.setenv("AYGOLOG_PORT", "9000")
    settings = LogApiSettings()
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    monkeypatch.setenv("AYGOLOG_HOST", "127.0.0.2")
    settings = LogApiSettings()
    assert (settings.host, settings.port) == ("127.0.0.2", 9000)
    assert LogApiSettings(port=0).port == 0  # arguments win over everything


@pytest.mark.parametrize(
    ("urls", "reason"),
    [
        ("https://+:8443", "no http:// address"),
        ("http://+:http", "bad port"),
        ("http://bad host:80", "bad host"),
    ],
)
def test_bad_aspnetcore_urls(monkeypatch: pytest.MonkeyPatch, urls: str, reason: str) -> None:
    monkeypatch.setenv("ASPNETCORE_URLS", urls)
    with pytest.raises(ValidationError, match=reason) as info:
        LogApiSettings()
    assert "ASPNETCORE_URLS" in _error(info)


# --- precedence ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "seed", "value", "read"),
    [
        ("AYGOLOG_REDIS_URL", "ConnectionStrings__Redis", ("a:1", "b:2"), "redis.url"),
        (
            "AYGOLOG_INSTANCE_NAME",
            "ServiceRegistration__ServiceName",
            ("ours", "seed"),
            "instance_name",
        ),
        (
            "AYGOLOG_LB_URL",
            "ServiceRegistration__LoadBalancerUrl",
            ("ours:1", "seed:2"),
            "registration.lb_url",
        ),
        (
            "AYGOLOG_ADVERTISE_HOST",
            "ServiceRegistration__ServiceIpAddress",
            ("10.0.0.1", "10.0.0.2"),
            "registration.advertise_host",
        ),
        (
            "AYGOLOG_ADVERTISE_PORT",
            "ServiceRegistration__ServicePort",
            ("1111", "2222"),
            "registration.advertise_port",
        ),
        (
            "AYGOLOG_AUTO_REGISTER",
            "ServiceRegistration__AutoRegister",
            ("false", "true"),
            "registration.auto_register",
        ),
    ],
)
def test_aygolog_names_win(
    monkeypatch: pytest.MonkeyPatch, ours: str, seed: str, value: tuple[str, str], read: str
) -> None:
    monkeypatch.setenv("AYGOLOG_LB_URL", "lb:8080")
    monkeypatch.setenv(seed, value[1])
    monkeypatch.setenv(ours, value[0])
    with_both = LogApiSettings()
    monkeypatch.delenv(seed)
    only_ours = LogApiSettings()
    monkeypatch.delenv(ours)
    monkeypatch.setenv(seed, value[1])
    only_seed = LogApiSettings()

    def get(settings: LogApiSettings) -> object:
        obj: object = settings
        for part in read.split("."):
            obj = getattr(obj, part)
        return obj

    assert get(with_both) == get(only_ours)
    assert get(with_both) != get(only_seed)


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AYGOLOG_REDIS_URL", "")
    monkeypatch.setenv("ConnectionStrings__Redis", "seed:6379")
    monkeypatch.setenv("AYGOLOG_PORT", "")
    settings = LogApiSettings()
    assert settings.redis.url == "redis://seed:6379/0"
    assert settings.port == 8080


# --- our names ----------------------------------------------------------------------------------


def test_aygolog_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AYGOLOG_REDIS_URL": "rediss://:pw@cache.example.com:6380/2",
        "AYGOLOG_REDIS_PREFIX": "team-a",
        "AYGOLOG_REDIS_CONNECT_TIMEOUT": "0.5",
        "AYGOLOG_REDIS_SOCKET_TIMEOUT": "3",
        "AYGOLOG_HOST": "0.0.0.0",
        "AYGOLOG_PORT": "9001",
        "AYGOLOG_INSTANCE_NAME": "api-1",
        "AYGOLOG_LB_URL": "https://lb.example.com",
        "AYGOLOG_ADVERTISE_URL": "http://api-1.internal:9001/",
        "AYGOLOG_REGISTRATION_TOKEN": "t0ken",
        "AYGOLOG_HEARTBEAT_INTERVAL": "0.5",
        "AYGOLOG_RETENTION_MAX_ENTRIES": "0",
        "AYGOLOG_RETENTION_MAX_AGE": "3600",
        "AYGOLOG_MAX_BATCH_ITEMS": "500",
        "AYGOLOG_MAX_BODY_BYTES": "65536",
        "AYGOLOG_CORS_ORIGINS": "*",
    }.items():
        monkeypatch.setenv(name, value)
    api = LogApiSettings()
    assert api.redis.url == "rediss://:pw@cache.example.com:6380/2"
    assert api.redis.prefix == "team-a"
    assert (api.redis.connect_timeout, api.redis.socket_timeout) == (0.5, 3.0)
    assert (api.host, api.port, api.instance_name) == ("0.0.0.0", 9001, "api-1")
    assert api.registration.lb_url == "https://lb.example.com"
    assert api.registration.registration_token == SecretStr("t0ken")
    assert api.registration.heartbeat_interval == 0.5
    assert (api.retention_max_entries, api.retention_max_age) == (0, 3600.0)
    assert (api.max_batch_items, api.max_body_bytes) == (500, 65536)
    assert api.cors_origins == ["*"]
    assert api.advertised_url() == "http://api-1.internal:9001"


def test_load_balancer_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ConnectionStrings__Redis": "10.0.0.5:6379",
        "ASPNETCORE_URLS": "http://+:8080",
        "AYGOLOG_STRATEGY": "Round-Robin",
        "AYGOLOG_REGISTRATION_TOKEN": "t0ken",
        "AYGOLOG_HEARTBEAT_TTL": "10",
        "AYGOLOG_CONNECT_TIMEOUT": "0.25",
        "AYGOLOG_RESPONSE_TIMEOUT": "5",
        "AYGOLOG_CORS_ORIGINS": "http://ui.example.com, https://other.example.com:8443/",
    }.items():
        monkeypatch.setenv(name, value)
    lb = LoadBalancerSettings()
    assert lb.redis.url == "redis://10.0.0.5:6379/0"
    assert (lb.host, lb.port) == ("0.0.0.0", 8080)
    assert lb.strategy == "round_robin"
    assert lb.registration_token is not None
    assert lb.registration_token.get_secret_value() == "t0ken"
    assert "t0ken" not in repr(lb)
    assert (lb.heartbeat_ttl, lb.connect_timeout, lb.response_timeout) == (10.0, 0.25, 5.0)
    assert lb.cors_origins == ["http://ui.example.com", "https://other.example.com:8443"]


def test_load_balancer_defaults() -> None:
    lb = LoadBalancerSettings(registration_token=SecretStr("x"))
    assert lb.strategy == "p2c"
    assert (lb.heartbeat_ttl, lb.connect_timeout, lb.response_timeout) == (6.0, 1.0, 30.0)
    assert lb.cors_origins == ["*"]  # as the seed's LB: its React page is on another origin
    assert lb.insecure_open_registration is False


def test_load_balancer_health_retry_and_limit_defaults() -> None:
    lb = LoadBalancerSettings(insecure_open_registration=True)
    assert (lb.health_check_interval, lb.health_check_timeout) == (2.0, 1.0)
    assert (lb.healthy_threshold, lb.unhealthy_threshold) == (2, 3)
    assert (lb.ejection_base, lb.ejection_max, lb.max_ejected_percent) == (5.0, 300.0, 50.0)
    assert lb.registry_poll_interval == 1.0
    assert (lb.max_retries, lb.retry_budget_percent, lb.retry_budget_window) == (2, 20.0, 10.0)
    assert lb.retry_budget_min_per_second == 3.0
    assert lb.max_body_bytes == 10 * 1024 * 1024
    assert [str(n) for n in lb.registration_allowed_networks] == [
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7"
    ]  # fmt: skip
    assert lb.api_keys == {}


def test_load_balancer_health_retry_and_limit_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AYGOLOG_INSECURE_OPEN_REGISTRATION": "true",
        "AYGOLOG_HEALTH_CHECK_INTERVAL": "0",
        "AYGOLOG_HEALTH_CHECK_TIMEOUT": "0.5",
        "AYGOLOG_HEALTHY_THRESHOLD": "1",
        "AYGOLOG_UNHEALTHY_THRESHOLD": "4",
        "AYGOLOG_EJECTION_BASE": "1.5",
        "AYGOLOG_EJECTION_MAX": "60",
        "AYGOLOG_MAX_EJECTED_PERCENT": "100",
        "AYGOLOG_REGISTRY_POLL_INTERVAL": "0.25",
        "AYGOLOG_MAX_RETRIES": "0",
        "AYGOLOG_RETRY_BUDGET_PERCENT": "5",
        "AYGOLOG_RETRY_BUDGET_MIN_PER_SECOND": "0",
        "AYGOLOG_RETRY_BUDGET_WINDOW": "60",
        "AYGOLOG_MAX_BODY_BYTES": "4096",
        "AYGOLOG_REGISTRATION_ALLOWED_NETWORKS": "10.0.0.0/8, 192.168.1.7, fd00::/8",
        "AYGOLOG_API_KEYS": "k-read:read, k-write:WRITE,k:with:colons:read+write,",
    }.items():
        monkeypatch.setenv(name, value)
    lb = LoadBalancerSettings()
    assert (lb.health_check_interval, lb.health_check_timeout) == (0.0, 0.5)
    assert (lb.healthy_threshold, lb.unhealthy_threshold) == (1, 4)
    assert (lb.ejection_base, lb.ejection_max, lb.max_ejected_percent) == (1.5, 60.0, 100.0)
    assert lb.registry_poll_interval == 0.25
    assert (lb.max_retries, lb.retry_budget_percent, lb.retry_budget_window) == (0, 5.0, 60.0)
    assert lb.retry_budget_min_per_second == 0.0
    assert lb.max_body_bytes == 4096
    assert [str(n) for n in lb.registration_allowed_networks] == [
        "10.0.0.0/8",
        "192.168.1.7/32",
        "fd00::/8",
    ]
    assert lb.api_keys == {"k-read": "read", "k-write": "write", "k:with:colons": "read+write"}
    assert "k-read" not in repr(lb)  # keys are secrets


def test_api_keys_and_networks_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AYGOLOG_INSECURE_OPEN_REGISTRATION", "true")
    monkeypatch.setenv("AYGOLOG_API_KEYS", '{"abc": "read+write"}')
    monkeypatch.setenv("AYGOLOG_REGISTRATION_ALLOWED_NETWORKS", '["10.1.2.0/24"]')
    lb = LoadBalancerSettings()
    assert lb.api_keys == {"abc": "read+write"}
    assert [str(n) for n in lb.registration_allowed_networks] == ["10.1.2.0/24"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("secret-key", "entry 1 is not key:scope"),
        ("ok:read,secret-key:admin", "API key 2 has scope 'admin'"),
        ("secret key:read", "API key 1 must be 1-256 visible ASCII"),
        (":read", "API key 1 must be"),
        ('{"secret-key": 1}', "API key 1 has scope 1"),
        ('["secret-key"]', "entry 1 is not key:scope"),
        ('{"secret-key": "read"', "Expecting"),
    ],
)
def test_bad_api_keys_are_refused_without_quoting_them(
    monkeypatch: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    monkeypatch.setenv("AYGOLOG_INSECURE_OPEN_REGISTRATION", "true")
    monkeypatch.setenv("AYGOLOG_API_KEYS", value)
    with pytest.raises(ValidationError, match=reason) as info:
        LoadBalancerSettings()
    assert "AYGOLOG_API_KEYS" in _error(info)
    assert "secret" not in _error(info)


def test_ejection_max_below_base_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"AYGOLOG_EJECTION_MAX \(5 s\) is shorter than"):
        LoadBalancerSettings(insecure_open_registration=True, ejection_base=10, ejection_max=5)


def test_cors_origins_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AYGOLOG_INSECURE_OPEN_REGISTRATION", "true")
    monkeypatch.setenv("AYGOLOG_CORS_ORIGINS", '["*"]')
    assert LoadBalancerSettings().cors_origins == ["*"]


def test_strategy_names_match_the_balancer() -> None:
    assert set(get_args(StrategyName)) == set(STRATEGIES)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("P2C", "p2c"), ("power-of-two-choices", "p2c"), ("weighted_round_robin", "weighted")],
)
def test_strategy_aliases(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv("AYGOLOG_STRATEGY", value)
    lb = LoadBalancerSettings(insecure_open_registration=True)
    assert lb.strategy == expected


# --- the web page -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "http://127.0.0.1:8080"),
        ({"VITE_API_BASE_URL": "10.0.0.7", "VITE_API_PORT": "8080"}, "http://10.0.0.7:8080"),
        ({"VITE_API_BASE_URL": "10.0.0.7"}, "http://10.0.0.7"),
        ({"VITE_API_BASE_URL": "http://10.0.0.7/"}, "http://10.0.0.7"),
        (
            {"VITE_API_BASE_URL": "https://lb.example.com", "VITE_API_PORT": "8443"},
            "https://lb.example.com:8443",
        ),
        ({"VITE_API_BASE_URL": "http://lb:8080", "VITE_API_PORT": "8080"}, "http://lb:8080"),
        ({"VITE_API_PORT": "9000"}, "http://127.0.0.1:9000"),
        (
            {
                "AYGOLOG_LB_URL": "lb.internal:80",
                "VITE_API_BASE_URL": "10.0.0.7",
                "VITE_API_PORT": "1",
            },
            "http://lb.internal:80",
        ),
    ],
)
def test_ui_lb_url(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert UISettings().lb_url == expected


def test_ui_listen_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (UISettings().host, UISettings().port) == ("127.0.0.1", 8000)
    monkeypatch.setenv("AYGOLOG_UI_HOST", "0.0.0.0")
    monkeypatch.setenv("AYGOLOG_UI_PORT", "5173")
    monkeypatch.setenv("AYGOLOG_PORT", "1")  # the services' port is not the page's
    assert (UISettings().host, UISettings().port) == ("0.0.0.0", 5173)


def test_ui_base_url_and_port_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITE_API_BASE_URL", "http://lb:8080")
    monkeypatch.setenv("VITE_API_PORT", "9090")
    with pytest.raises(ValidationError, match="VITE_API_PORT is 9090"):
        UISettings()


# --- errors -------------------------------------------------------------------------------------


def test_bad_seed_redis_address_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ConnectionStrings__Redis", "not a url:xx")
    with pytest.raises(ValidationError) as info:
        LogApiSettings()
    message = _error(info)
    assert "ConnectionStrings__Redis" in message
    assert "AYGOLOG_REDIS_URL" not in message
    assert "'not a url' is not a host name or IP address" in message


def test_bad_redis_url_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AYGOLOG_REDIS_URL", "redis://:hunter2@h:port")
    with pytest.raises(ValidationError) as info:
        RedisSettings()
    assert "AYGOLOG_REDIS_URL" in _error(info)
    assert "hunter2" not in _error(info)
    settings = RedisSettings(url="redis://app:hunter2@h:1/0")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)
    assert settings.url == "redis://app:hunter2@h:1/0"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("AYGOLOG_PORT", "eighty", "valid integer"),
        ("AYGOLOG_PORT", "70000", "less than or equal to 65535"),
        ("AYGOLOG_HOST", "not a host", "not a host name"),
        ("ServiceRegistration__ServicePort", "x", "valid integer"),
        ("ServiceRegistration__AutoRegister", "perhaps", "valid boolean"),
        ("ServiceRegistration__LoadBalancerUrl", "ftp://lb", "not an http:// or https:// URL"),
        ("ServiceRegistration__ServiceIpAddress", "10.0.0 .1", "not a host name"),
        ("ServiceRegistration__ServiceName", "has space", "instance name"),
        ("AYGOLOG_RETENTION_MAX_AGE", "-1", "greater than or equal to 0"),
        ("AYGOLOG_HEARTBEAT_INTERVAL", "0", "greater than 0"),
        ("AYGOLOG_REDIS_PREFIX", "a{b}", "key prefix"),
        ("AYGOLOG_MAX_BATCH_ITEMS", "0", "greater than or equal to 1"),
        ("AYGOLOG_CORS_ORIGINS", "http://a/path", "is not an origin"),
    ],
)
def test_log_api_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=reason) as info:
        LogApiSettings()
    assert name in _error(info)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("AYGOLOG_STRATEGY", "fastest", "'round_robin', 'random', 'least_outstanding'"),
        ("AYGOLOG_CORS_ORIGINS", "ui.example.com", "is not an origin"),
        ("AYGOLOG_CORS_ORIGINS", "[not json", "Value error"),
        ("AYGOLOG_HEARTBEAT_TTL", "soon", "valid number"),
        ("AYGOLOG_REGISTRATION_TOKEN", "  ", "blank"),
        ("AYGOLOG_REGISTRATION_ALLOWED_NETWORKS", "10.0.0.0/33", "is not a network"),
        ("AYGOLOG_REGISTRATION_ALLOWED_NETWORKS", "lan", "is not a network"),
        ("AYGOLOG_MAX_EJECTED_PERCENT", "150", "less than or equal to 100"),
        ("AYGOLOG_HEALTHY_THRESHOLD", "0", "greater than or equal to 1"),
        ("AYGOLOG_UNHEALTHY_THRESHOLD", "x", "valid integer"),
        ("AYGOLOG_HEALTH_CHECK_INTERVAL", "-1", "greater than or equal to 0"),
        ("AYGOLOG_HEALTH_CHECK_TIMEOUT", "0", "greater than 0"),
        ("AYGOLOG_EJECTION_BASE", "0", "greater than 0"),
        ("AYGOLOG_REGISTRY_POLL_INTERVAL", "0", "greater than 0"),
        ("AYGOLOG_MAX_RETRIES", "-1", "greater than or equal to 0"),
        ("AYGOLOG_RETRY_BUDGET_PERCENT", "-5", "greater than or equal to 0"),
        ("AYGOLOG_RETRY_BUDGET_WINDOW", "0", "greater than 0"),
        ("AYGOLOG_MAX_BODY_BYTES", "0", "greater than or equal to 1"),
    ],
)
def test_load_balancer_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    monkeypatch.setenv("AYGOLOG_INSECURE_OPEN_REGISTRATION", "true")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=reason) as info:
        LoadBalancerSettings()
    assert name in _error(info)


def test_load_balancer_refuses_open_registration_unless_asked() -> None:
    with pytest.raises(ValidationError, match="AYGOLOG_REGISTRATION_TOKEN is not set"):
        LoadBalancerSettings()
    assert LoadBalancerSettings(insecure_open_registration=True).registration_token is None


def test_cluster_needs_a_tcp_address() -> None:
    assert RedisSettings(url="redis://h:7000", cluster=True).cluster is True
    for url in (None, "unix:///tmp/r.sock", "redis://h:7000/1", "redis+sentinel://s/m"):
        with pytest.raises(ValidationError, match="AYGOLOG_REDIS_CLUSTER needs"):
            RedisSettings(url=url, cluster=True)


def test_unknown_arguments_are_refused() -> None:
    with pytest.raises(ValidationError, match="prot"):
        LogApiSettings(prot=8080)  # type: ignore[call-arg]
