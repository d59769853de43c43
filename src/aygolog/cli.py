"""The `aygolog` command.

    aygolog up [--instances N] [--data-dir DIR | --ephemeral]     run the whole system here
    aygolog api [--host H] [--port P] [--workers N] [--backpressure N]  run a Log API instance
    aygolog lb [--host H] [--port P] [--workers N] [--tls-cert PEM --tls-key PEM]
               [--insecure-open-registration]                     run the load balancer
    aygolog ui [--host H] [--port P] [--lb-url URL]                run the web page
    aygolog send [MESSAGE] [--level L] [--service S] [--attr K=V]  send a log, or stdin lines
    aygolog tail [--query Q] [filters]                            follow logs live
    aygolog query [QUERY] [filters] [--format table|json|ndjson|--json] [--all]
                                                 search stored logs, or count (`| count()`)
    aygolog services                                              the LB's instances
    aygolog version

The client commands (send, tail, query, services) talk to `--url` (default `$AYGOLOG_URL`, else
http://127.0.0.1:8080); their code is in `aygolog._cli_client`.

Settings come from the environment (the seed's names work: `ConnectionStrings__Redis`,
`ServiceRegistration__*`); the flags here override them. Exit codes: 0 success, 1 a user error,
2 a server unavailable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn, TypeVar

from aygolog import __version__

if TYPE_CHECKING:
    from pydantic import ValidationError as PydanticValidationError
    from pydantic_settings import BaseSettings

S = TypeVar("S", bound="BaseSettings")

__all__ = ["main"]

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_UNAVAILABLE = 2


def _serve(
    target: str, host: str, port: int, server: str, *, workers: int = 1, backpressure: int = 10_000
) -> None:
    """Run the ASGI app factory `target` ("module:function") until interrupted.

    With granian, `workers` processes each serve up to `backpressure` requests at once (live
    tails included); each worker dies with this process, even when it is killed with SIGKILL
    (see `aygolog._lifeline`).
    """
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
            workers=workers,
            limit_concurrency=backpressure,  # per worker process, as with granian
        )
        return
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    from aygolog.server.worker import PARENT_VARIABLE

    class DrainingServer(Server):  # type: ignore[misc, valid-type]
        """granian, telling each worker to drain (SIGUSR1) before it stops them."""

        def shutdown(self, exit_code: int = 0) -> None:
            _drain_workers(getattr(self, "wrks", ()))
            super().shutdown(exit_code)

    os.environ[PARENT_VARIABLE] = str(os.getpid())  # the workers watch for this PID's death
    if target == "aygolog.server.app:create_log_api":
        target = "aygolog.server.worker:create_worker_app"
    DrainingServer(
        target,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        factory=True,
        workers=workers,
        backlog=_BACKLOG,
        backpressure=backpressure,
        loop=Loops.uvloop,
        log_access=False,
        workers_kill_timeout=5,
    ).serve()


_BACKLOG = 4096
"""Connections the kernel may queue before the server accepts them (capped by somaxconn)."""


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the new soft
    limit (thousands of live tails need a socket each; the usual soft limit is 1,024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        for wanted in (target, 1 << 20, 10_240):  # macOS refuses more than OPEN_MAX (10,240)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, target), hard))
                break
            except (ValueError, OSError):
                continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _reasons(exc: PydanticValidationError) -> str:
    """A settings error as one line: each field's reason, without pydantic's decoration."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc'])}: "
        f"{str(error['msg']).removeprefix('Value error, ')}".removeprefix(": ")
        for error in exc.errors()
    )


def _drain_workers(workers: Sequence[object], wait: float = 0.5) -> None:
    """SIGUSR1 to each granian worker process, then a moment for it to deregister and end its
    live streams (see `aygolog.server.app`); a worker that is gone is skipped."""
    import contextlib
    import signal
    import time

    signalled = False
    for worker in workers:
        pid = getattr(getattr(worker, "inner", None), "pid", None)
        if isinstance(pid, int):
            # As granian's own terminate() does, so a worker that is done draining before it is
            # told to stop is not taken for a crash.
            with contextlib.suppress(AttributeError):
                worker.interrupt_by_parent = True  # type: ignore[attr-defined]
            try:
                os.kill(pid, signal.SIGUSR1)
                signalled = True
            except ProcessLookupError:
                pass
    if signalled:
        time.sleep(wait)


def _settings(command: str, cls: type[S], flags: Mapping[str, object]) -> S | None:
    """`cls` from the environment, after setting the variables of the flags given (`flags`:
    variable -> value, None or empty when not given); a settings error is printed as one line."""
    for name, value in flags.items():
        if value is not None and value != "":  # `--port 0` and `--workers 0` count
            os.environ[name] = str(value)
    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as exc:
        print(f"aygolog {command}: {_reasons(exc)}", file=sys.stderr)
        return None


def _listen_flags(args: argparse.Namespace) -> dict[str, object]:
    return {"AYGOLOG_HOST": args.host, "AYGOLOG_PORT": args.port}


def _api(args: argparse.Namespace) -> int:
    from aygolog.settings import LogApiSettings

    flags = {
        **_listen_flags(args),
        "AYGOLOG_WORKERS": args.workers,
        "AYGOLOG_BACKPRESSURE": args.backpressure,
    }
    settings = _settings("api", LogApiSettings, flags)
    if settings is None:
        return EXIT_USER_ERROR
    limit = raise_open_files_limit()  # the workers inherit it; each process has its own files
    needed = settings.backpressure + 256
    if limit < needed:
        print(
            f"aygolog api: warning: the open-files limit is {limit}, below what --backpressure"
            f" {settings.backpressure} needs per worker ({needed}); raise it (ulimit -n, or"
            " LimitNOFILE= in systemd)",
            file=sys.stderr,
        )
    _serve(
        "aygolog.server.app:create_log_api",
        settings.host,
        settings.port,
        args.server,
        workers=settings.workers,
        backpressure=settings.backpressure,
    )
    return EXIT_OK


def _lb(args: argparse.Namespace) -> int:
    from aygolog.settings import LoadBalancerSettings

    flags = {
        **_listen_flags(args),
        "AYGOLOG_LB_WORKERS": args.workers,
        "AYGOLOG_TLS_CERT": args.tls_cert,
        "AYGOLOG_TLS_KEY": args.tls_key,
    }
    if args.insecure_open_registration:
        flags["AYGOLOG_INSECURE_OPEN_REGISTRATION"] = "true"
    settings = _settings("lb", LoadBalancerSettings, flags)
    if settings is None:
        return EXIT_USER_ERROR
    from aygolog.lb import serve_load_balancer
    from aygolog.lb.tls import TLSConfigError, server_context
    from aygolog.lb.workers import PortInUse, serve_workers

    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            server_context(settings.tls_cert, settings.tls_key)  # say what is wrong once, now
        except TLSConfigError as exc:
            print(f"aygolog lb: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
    raise_open_files_limit()  # two sockets per proxied live tail; the workers inherit it
    if settings.workers == 1:
        serve_load_balancer(settings)
        return EXIT_OK
    try:
        return serve_workers(settings)
    except PortInUse as exc:
        print(f"aygolog lb: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def _ui(args: argparse.Namespace) -> int:
    from aygolog.settings import UISettings

    port = None if args.port is None else str(args.port)  # --port 0: any free port
    flags = {"AYGOLOG_UI_HOST": args.host, "AYGOLOG_UI_PORT": port, "AYGOLOG_LB_URL": args.lb_url}
    settings = _settings("ui", UISettings, flags)
    if settings is None:
        return EXIT_USER_ERROR
    try:
        from aygolog.ui import run_ui
    except ImportError as exc:
        print(f"aygolog ui: the web page needs the `ui` extra ({exc})", file=sys.stderr)
        return EXIT_USER_ERROR
    run_ui(settings)
    return EXIT_OK


def _up(args: argparse.Namespace) -> int:
    import asyncio

    from aygolog.settings import RedisSettings
    from aygolog.up import UpOptions, run_up

    if args.instances < 1:
        print("aygolog up: --instances must be at least 1", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.lb_port == args.ui_port and not args.no_ui:
        print("aygolog up: --lb-port and --ui-port must differ", file=sys.stderr)
        return EXIT_USER_ERROR
    redis = _settings("up", RedisSettings, {})
    if redis is None:
        return EXIT_USER_ERROR
    if redis.url is not None and (args.data_dir is not None or args.ephemeral):
        print(
            "aygolog up: --data-dir and --ephemeral are for the private Redis, but a Redis URL is"
            " set (AYGOLOG_REDIS_URL or ConnectionStrings__Redis): it keeps its own data",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    from pathlib import Path

    from aygolog.up import default_data_dir

    data_dir = None if args.ephemeral else Path(args.data_dir or default_data_dir()).expanduser()
    options = UpOptions(
        instances=args.instances,
        host=args.host,
        lb_port=args.lb_port,
        ui_port=args.ui_port,
        ui=not args.no_ui,
        redis_url=redis.url,
        data_dir=None if redis.url is not None else data_dir,
    )
    try:
        return asyncio.run(run_up(options))
    except FileNotFoundError as exc:  # no Redis URL and no server binary
        print(f"aygolog up: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


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
    if "vite_api_base_url" in names:
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


def running_service(argv: Sequence[str]) -> tuple[str | None, int | None]:
    """The role (`api`, `lb`, `ui`) and `--port` of an `aygolog` command line, where it says."""
    role: str | None = None
    port: int | None = None
    for i, arg in enumerate(argv):
        if role is None and arg in ("api", "lb", "ui"):
            role = arg
        elif arg == "--port" and i + 1 < len(argv) and argv[i + 1].isdigit():
            port = int(argv[i + 1])
        elif arg.startswith("--port=") and arg[7:].isdigit():
            port = int(arg[7:])
    return role, port


def _container_command() -> list[str]:
    try:
        with open("/proc/1/cmdline", "rb") as cmdline:
            return [part.decode(errors="replace") for part in cmdline.read().split(b"\0") if part]
    except OSError:
        return []


def _healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when this container's service answers its health endpoint (Docker HEALTHCHECK).

    The service is the container's main process (PID 1): its command line names the role and
    may give `--port`; else the role comes from the environment, as `aygolog auto` chose it.
    """
    import urllib.request

    role, port = running_service(_container_command())
    role = role or detect_role()
    path = "/" if role == "ui" else "/health"
    if port is None and role == "ui":
        port = int(os.environ.get("AYGOLOG_UI_PORT", "8000"))
    elif port is None:
        port = int(os.environ.get("AYGOLOG_PORT", "8080"))
        urls = os.environ.get("ASPNETCORE_URLS", "")
        if "AYGOLOG_PORT" not in os.environ and urls.rsplit(":", 1)[-1].strip("/").isdigit():
            port = int(urls.rsplit(":", 1)[-1].strip("/"))
    scheme, context = "http", None
    if role == "lb" and os.environ.get("AYGOLOG_TLS_CERT"):
        import ssl

        # The load balancer serves TLS: ask it over TLS. Its certificate names its public host,
        # not 127.0.0.1, and this asks only whether it answers: no verification.
        scheme, context = "https", ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(
            f"{scheme}://127.0.0.1:{port}{path}", timeout=2, context=context
        ) as response:
            return EXIT_OK if response.status == 200 else EXIT_UNAVAILABLE
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line exits 1 (a user error), not argparse's 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def _version(args: argparse.Namespace) -> int:
    print(__version__)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aygolog", description="aygolog: distributed log management for Python.")
    parser.add_argument(
        "--url",
        default=None,
        help="for send/tail/query/services: the load balancer or an instance"
        " (default $AYGOLOG_URL, else http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="for send/tail/query/services: an API key, when the load balancer requires one"
        " (default $AYGOLOG_API_KEY)",
    )
    parser.add_argument("--version", action="version", version=f"aygolog {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    up = commands.add_parser(
        "up", help="run the whole system here: Redis, the load balancer, N instances, the web page"
    )
    up.add_argument("--instances", type=int, default=3, help="Log API instances (default 3)")
    up.add_argument("--host", default="127.0.0.1", help="address everything listens on")
    up.add_argument("--lb-port", type=int, default=8080, help="load balancer port (default 8080)")
    up.add_argument("--ui-port", type=int, default=8000, help="web page port (default 8000)")
    up.add_argument("--no-ui", action="store_true", help="do not start the web page")
    keep = up.add_mutually_exclusive_group()
    keep.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where the private Redis keeps the logs (default $AYGOLOG_DATA_DIR, else"
        " $XDG_DATA_HOME/aygolog or ~/.local/share/aygolog)",
    )
    keep.add_argument(
        "--ephemeral",
        action="store_true",
        help="keep nothing: the private Redis runs in a temporary directory",
    )
    up.set_defaults(handler=_up)
    api = commands.add_parser("api", help="run a Log API instance (default port 8080)")
    api.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=None, help="port (default 8080)")
    api.add_argument(
        "--server",
        choices=("granian", "uvicorn"),
        default="granian",
        help="the ASGI server (default granian; see docs/benchmarks.md)",
    )
    api.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default 1, or $AYGOLOG_WORKERS)",
    )
    api.add_argument(
        "--backpressure",
        type=int,
        default=None,
        help="most requests one worker serves at once, live tails included"
        " (default 10000, or $AYGOLOG_BACKPRESSURE)",
    )
    api.set_defaults(handler=_api)
    lb = commands.add_parser("lb", help="run the load balancer (default port 8080)")
    lb.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    lb.add_argument("--port", type=int, default=None, help="port (default 8080)")
    lb.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes on the same port (default: the number of CPUs, or"
        " $AYGOLOG_LB_WORKERS); 1: a single process",
    )
    lb.add_argument(
        "--tls-cert",
        default=None,
        metavar="PEM",
        help="serve HTTPS with this certificate chain (and --tls-key; or $AYGOLOG_TLS_CERT)",
    )
    lb.add_argument(
        "--tls-key",
        default=None,
        metavar="PEM",
        help="the certificate's private key, unencrypted (or $AYGOLOG_TLS_KEY)",
    )
    lb.add_argument(
        "--insecure-open-registration",
        action="store_true",
        help="let anyone register an instance when no AYGOLOG_REGISTRATION_TOKEN is set (unsafe)",
    )
    lb.set_defaults(handler=_lb)
    ui = commands.add_parser("ui", help="run the web page (default port 8000)")
    ui.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=None, help="port (default 8000)")
    ui.add_argument(
        "--lb-url",
        default=None,
        help="the load balancer (default: VITE_API_BASE_URL + VITE_API_PORT, or :8080 here)",
    )
    ui.set_defaults(handler=_ui)
    from aygolog._cli_client import add_client_commands

    add_client_commands(commands)
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=_version)
    auto = commands.add_parser(
        "auto", help="run the service the environment describes (the container's default)"
    )
    auto.set_defaults(handler=_auto)
    health = commands.add_parser("healthcheck", help="exit 0 if this host's service is healthy")
    health.set_defaults(handler=_healthcheck)
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
