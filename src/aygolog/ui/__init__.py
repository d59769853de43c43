"""The web page (NiceGUI): send, search and follow logs, and watch the instances.

`run_ui(settings)` serves it (`aygolog ui`); `build_root(lb_url)` is its page function, for
`ui.run(root)` or NiceGUI's user simulation in tests. The page reaches the system only through
the load balancer, with `AsyncLogClient`.

- `page.py`: the widgets and what they do; `state.py`: the filters (the search box takes the
  query language), rows, buffers and series, pure; `histogram.py`: the count chart above the
  table, pure; `server.py`: serving it.
"""

from __future__ import annotations

from aygolog.ui.page import LogView, build_root
from aygolog.ui.server import run_ui

__all__ = ["LogView", "build_root", "run_ui"]
