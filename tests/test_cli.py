"""The command line: role detection for the container image, exit codes."""

from __future__ import annotations

from aygolog.cli import EXIT_USER_ERROR, detect_role, main


def test_container_role_comes_from_the_seed_variables() -> None:
    seed_lb = {"ASPNETCORE_URLS": "http://+:8080", "ConnectionStrings__Redis": "10.0.0.5:6379"}
    seed_api = {
        "ConnectionStrings__Redis": "10.0.0.5:6379",
        "ServiceRegistration__ServiceName": "LogApi-Dev-instance-1",
        "ServiceRegistration__LoadBalancerUrl": "10.0.0.7:8080",
    }
    seed_ui = {"VITE_API_BASE_URL": "10.0.0.7", "VITE_API_PORT": "8080"}
    assert detect_role(seed_lb) == "lb"
    assert detect_role(seed_api) == "api"
    assert detect_role(seed_ui) == "ui"
    assert detect_role({**seed_api, "AYGOLOG_ROLE": "LB"}) == "lb"


def test_no_command_is_a_user_error() -> None:
    assert main([]) == EXIT_USER_ERROR
