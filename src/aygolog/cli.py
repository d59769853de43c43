"""The `aygolog` command.

    aygolog up [--instances N]                                    run the whole system here
    aygolog api [--host H] [--port P] [--server granian|uvicorn]   run a Log API instance
    aygolog lb [--host H] [--port P] [--insecure-open-registration] run the load balancer
    aygolog version

Settings come from the environment (the seed's names work: `ConnectionStrings__Redis`,
`ServiceRegistration__*`); the flags here override them. Exit codes: 0 success, 1 a user error,
2 a server unavailable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from aygolog import __version__

__all__ = ["main"]

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_UNAVAILABLE = 2


def _serve(target: str, host: str, port: int, server: str) -> None:
    """Run the ASGI app factory `target` ("module:function") until interrupted."""
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            target,
            factory=True,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        return
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    Server(
        target,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        factory=True,
        workers=1,
        loop=Loops.uvloop,
        log_access=False,
        workers_kill_timeout=5,
    ).serve()


def _api(args: argparse.Namespace) -> int:
    if args.host:
        os.environ["AYGOLOG_HOST"] = args.host
    if args.port:
        os.environ["AYGOLOG_PORT"] = str(args.port)
    from aygolog.settings import LogApiSettings

    settings = LogApiSettings()
    _serve("aygolog.server.app:create_log_api", settings.host, settings.port, args.server)
    return EXIT_OK


def _lb(args: argparse.Namespace) -> int:
    if args.host:
        os.environ["AYGOLOG_HOST"] = args.host
    if args.port:
        os.environ["AYGOLOG_PORT"] = str(args.port)
    if args.insecure_open_registration:
        os.environ["AYGOLOG_INSECURE_OPEN_REGISTRATION"] = "true"
    from pydantic import ValidationError

    from aygolog.settings import LoadBalancerSettings

    try:
        settings = LoadBalancerSettings()
    except ValidationError as exc:
        reasons = "; ".join(
            str(error["msg"]).removeprefix("Value error, ") for error in exc.errors()
        )
        print(f"aygolog lb: {reasons}", file=sys.stderr)
        return EXIT_USER_ERROR
    from aygolog.lb import serve_load_balancer

    serve_load_balancer(settings)
    return EXIT_OK


def _up(args: argparse.Namespace) -> int:
    import asyncio

    from aygolog.settings import RedisSettings
    from aygolog.up import UpOptions, run_up

    if args.instances < 1:
        print("aygolog up: --instances must be at least 1", file=sys.stderr)
        return EXIT_USER_ERROR
    options = UpOptions(
        instances=args.instances,
        host=args.host,
        lb_port=args.lb_port,
        ui_port=args.ui_port,
        ui=not args.no_ui,
        redis_url=RedisSettings().url,
    )
    try:
        return asyncio.run(run_up(options))
    except FileNotFoundError as exc:  # no Redis URL and no server binary
        print(f"aygolog up: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def detect_role(env: dict[str, str] | None = None) -> str:
    """Which service the environment describes: `AYGOLOG_ROLE` if set, else the seed's names.

    The seed ran three images; ours is one. Its web page is configured with `VITE_API_*`, its
    Log API with `ServiceRegistration__*`, and its load balancer with neither.
    """
    env = dict(os.environ) if env is None else env
    names = {name.lower(): value for name, value in env.items() if value}
    role = names.get("aygolog_role", "").strip().lower()
    if role:
        return role
    if "vite_api_base_url" in names or "aygolog_ui_lb_url" in names:
        return "ui"
    if any(name.startswith("serviceregistration__") for name in names) or (
        "aygolog_instance_name" in names
    ):
        return "api"
    return "lb"


def _auto(args: argparse.Namespace) -> int:
    role = detect_role()
    if role not in ("api", "lb", "ui"):
        print(f"aygolog: AYGOLOG_ROLE must be api, lb or ui, not {role!r}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"aygolog: starting the {role} (chosen from the environment)", file=sys.stderr)
    return main([role])


def _healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when this container's service answers its health endpoint (Docker HEALTHCHECK)."""
    import urllib.request

    role = detect_role()
    if role == "ui":
        port, path = os.environ.get("AYGOLOG_UI_PORT", "8000"), "/"
    else:
        port, path = os.environ.get("AYGOLOG_PORT", "8080"), "/health"
        urls = os.environ.get("ASPNETCORE_URLS", "")
        if "AYGOLOG_PORT" not in os.environ and urls.rsplit(":", 1)[-1].strip("/").isdigit():
            port = urls.rsplit(":", 1)[-1].strip("/")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return EXIT_OK if response.status == 200 else EXIT_UNAVAILABLE
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aygolog", description="aygolog: distributed log management for Python."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    api = commands.add_parser("api", help="run a Log API instance (default port 8080)")
    api.add_argument("--host", default=None, help="address to listen on (default 0.0.0.0)")
    api.add_argument("--port", type=int, default=None, help="port (default 8080)")
    api.add_argument(
        "--server",
        choices=("granian", "uvicorn"),
        default="granian",
        help="the ASGI server (default granian; see docs/benchmarks.md)",
    )
    api.set_defaults(handler=_api)
    lb = commands.add_parser("lb", help="run the load balancer (default port 8080)")
    lb.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    lb.add_argument("--port", type=int, default=None, help="port (default 8080)")
    lb.add_argument(
        "--insecure-open-registration",
        action="store_true",
        help="let anyone register an instance when no AYGOLOG_REGISTRATION_TOKEN is set (unsafe)",
    )
    lb.set_defaults(handler=_lb)
    up = commands.add_parser(
        "up", help="run the whole system here: Redis, the load balancer, N instances, the web page"
    )
    up.add_argument("--instances", type=int, default=3, help="Log API instances (default 3)")
    up.add_argument("--host", default="127.0.0.1", help="address everything listens on")
    up.add_argument("--lb-port", type=int, default=8080, help="load balancer port (default 8080)")
    up.add_argument("--ui-port", type=int, default=8000, help="web page port (default 8000)")
    up.add_argument("--no-ui", action="store_true", help="do not start the web page")
    up.set_defaults(handler=_up)
    auto = commands.add_parser(
        "auto", help="run the service the environment describes (the container's default)"
    )
    auto.set_defaults(handler=_auto)
    health = commands.add_parser("healthcheck", help="exit 0 if this host's service is healthy")
    health.set_defaults(handler=_healthcheck)
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=lambda _args: print(__version__) or EXIT_OK)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
