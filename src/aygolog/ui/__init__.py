"""The web page (NiceGUI): send, search and follow logs, and watch the instances.

`run_ui(settings)` serves it (`aygolog ui`); `build_root(lb_url)` is its page function, for
`ui.run(root)` or NiceGUI's user simulation in tests. The page reaches the system only through
the load balancer, with `AsyncLogClient`.
"""

from __future__ import annotations

from aygolog.ui.page import LogView, build_root
from aygolog.ui.server import run_ui

__all__ = ["LogView", "build_root", "run_ui"]
