"""`run_ui`: serve the web page (what `aygolog ui` does) until SIGTERM or SIGINT."""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import NoReturn

from aygolog.settings import UISettings

__all__ = ["run_ui"]


def _exit_quietly(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def run_ui(settings: UISettings) -> None:
    """Serve the page on `settings.host:settings.port`, talking to `settings.lb_url`; blocks.

    SIGTERM and SIGINT stop it gracefully: open tabs are closed, then the process exits with 0.
    """
    from nicegui import ui

    from aygolog.ui.page import build_root

    # NiceGUI takes a PYTEST_CURRENT_TEST inherited from a test that started this process for
    # "running under pytest" and then ignores the port it is given.
    os.environ.pop("PYTEST_CURRENT_TEST", None)
    # uvicorn stops gracefully on these signals, then raises them again with the handlers found
    # at start: these make that second delivery (or one before serving starts) a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_quietly)
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    ui.run(
        build_root(settings.lb_url, api_key=api_key),
        host=settings.host,
        port=settings.port,
        title="aygolog",
        favicon="📜",
        dark=None,
        reload=False,
        show=False,
        show_welcome_message=False,
        uvicorn_logging_level="warning",
        reconnect_timeout=10.0,
        timeout_graceful_shutdown=3,
    )
