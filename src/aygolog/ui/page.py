"""The web page: send, search and follow logs, and watch the instances behind the load balancer.

One `LogView` per browser tab. It owns one `AsyncLogClient` (the page never touches Redis: like
the seed's React app it speaks only to the load balancer), a live-tail task and some timers, and
closes them all when NiceGUI deletes the tab's client. Every call to the API is wrapped: a failure
shows a banner or a notification with the server's message, never a blank or frozen page.

User data is rendered as text only: Vue's `{{ }}` interpolation and NiceGUI labels escape it; no
`ui.html`, no markdown, no `v-html`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import httpx
from nicegui import background_tasks, ui
from nicegui.events import GenericEventArguments
from starlette.requests import Request

from aygolog.client import AsyncLogClient, AsyncTail
from aygolog.errors import AygologError, NoHealthyInstance, Unavailable
from aygolog.models import CountResult, LogEntry, LogLevel
from aygolog.ui.histogram import histogram_options, histogram_request
from aygolog.ui.state import (
    LEVEL_COLORS,
    RANGES,
    Filters,
    IngestSeries,
    RowBuffer,
    describe_error,
    newer_than,
    parse_attributes,
    service_rows,
)

__all__ = ["LogView", "build_root"]

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 2.0
"""How often the services panel and the stats are refreshed (and an unreachable LB retried)."""
POLL_TIMEOUT: Final = 2.0
"""How long one poll of the services or the stats may take (one attempt, no retry)."""
FLUSH_SECONDS: Final = 0.25
"""How often rows that the live tail brought are put into the table, in one batch."""
TAIL_WAIT: Final = 3.0
"""How long to wait for the live tail to connect before running the query anyway."""
PAGE_SIZE: Final = 100
MAX_ROWS: Final = 500
MAX_HELD: Final = 5000
"""Entries kept while paused; the count of what arrived goes on beyond it."""

_LEVELS: Final = [level.value for level in LogLevel]

_LOG_COLUMNS: Final[list[dict[str, Any]]] = [
    {"name": "time", "label": "Time (UTC)", "field": "time", "align": "left"},
    {"name": "level", "label": "Level", "field": "level", "align": "left"},
    {
        "name": "service",
        "label": "Service",
        "field": "service",
        "align": "left",
        "headerClasses": "gt-xs",
    },
    {"name": "message", "label": "Message", "field": "message", "align": "left"},
    {
        "name": "instance",
        "label": "Instance",
        "field": "instance",
        "align": "left",
        "headerClasses": "gt-sm",
    },
]

# Text only: `{{ }}` and `:label`/`:title` bindings are escaped by Vue; nothing uses v-html.
_LOG_HEADER: Final = r"""
<q-tr :props="props">
  <q-th auto-width />
  <q-th v-for="col in props.cols" :key="col.name" :props="props" :class="col.headerClasses">
    {{ col.label }}
  </q-th>
</q-tr>
"""
_LOG_BODY: Final = r"""
<q-tr :props="props" class="cursor-pointer aygolog-row"
      @click="props.expand = !props.expand;
              if (props.expand && props.row.truncated && !props.row.full_message)
                $parent.$emit('expand', props.row.id)">
  <q-td auto-width>
    <q-icon :name="props.expand ? 'expand_less' : 'expand_more'" size="xs" />
  </q-td>
  <q-td key="time" :props="props" class="text-no-wrap">
    <span :title="props.row.timestamp">{{ props.row.time }}</span>
  </q-td>
  <q-td key="level" :props="props">
    <q-badge :color="props.row.color" :label="props.row.level" />
  </q-td>
  <q-td key="service" :props="props" class="gt-xs">{{ props.row.service }}</q-td>
  <q-td key="message" :props="props" class="aygolog-message">{{ props.row.message }}</q-td>
  <q-td key="instance" :props="props" class="gt-sm text-no-wrap">{{ props.row.instance }}</q-td>
</q-tr>
<q-tr v-if="props.expand" :props="props">
  <q-td colspan="100%" class="aygolog-detail">
    <div class="aygolog-full">{{ props.row.full_message || props.row.message }}</div>
    <div class="q-mt-xs">
      <q-chip v-for="a in props.row.attributes" :key="a" dense square :label="a" />
    </div>
    <div class="text-caption text-grey-7">
      {{ props.row.timestamp }} · {{ props.row.service || 'no service' }} ·
      served by {{ props.row.instance }} · id {{ props.row.id }}
      <span v-if="props.row.trace_id"> · trace {{ props.row.trace_id }}</span>
    </div>
  </q-td>
</q-tr>
"""

_SERVICE_COLUMNS: Final[list[dict[str, Any]]] = [
    {"name": "name", "label": "Instance", "field": "name", "align": "left"},
    {"name": "status", "label": "Status", "field": "status", "align": "left"},
    {"name": "heartbeat", "label": "Heartbeat", "field": "heartbeat", "align": "right"},
    {"name": "in_flight", "label": "In flight", "field": "in_flight", "align": "right"},
    {"name": "served", "label": "Served", "field": "served", "align": "right"},
]
_STATUS_CELL: Final = r"""
<q-td key="status" :props="props">
  <q-badge :color="props.row.color" :label="props.row.status" />
</q-td>
"""

_CSS: Final = """
.aygolog-message { white-space: normal; word-break: break-word; min-width: 10rem; }
.aygolog-full { white-space: pre-wrap; word-break: break-word; font-family: monospace; }
.aygolog-detail { background: rgba(127, 127, 127, 0.08); white-space: normal;
  word-break: break-word; }
@media (max-width: 599px) {
  .aygolog-message { min-width: 6rem; }
  .aygolog-table .q-table th, .aygolog-table .q-table td { padding: 4px 4px; }
}
.aygolog-table { width: 100%; }
.aygolog-chart { height: 180px; width: 100%; }
"""


class LogView:
    """One tab of the page: its widgets, its `AsyncLogClient`, its live tail and its timers.

    Args:
        lb_url: the load balancer.
        filters: what the table shows first (from the URL).
        api_key: sent to the load balancer when it requires API keys.
        client: the SDK client to use (closed with the view); by default a new one.
        poll_client: the client of the periodic polls (closed with the view); by default a new
            one with a short timeout and no retries (or `client`, when that is given).
    """

    def __init__(
        self,
        lb_url: str,
        filters: Filters,
        *,
        api_key: str | None = None,
        client: AsyncLogClient | None = None,
        poll_client: AsyncLogClient | None = None,
    ) -> None:
        self.lb_url = lb_url
        self.filters = filters
        # Short timeouts and few retries: the panels poll every 2 s, and an unreachable load
        # balancer should show as a banner within seconds, not after a long backoff.
        self.api = client or AsyncLogClient(
            lb_url, timeout=httpx.Timeout(5.0, connect=2.0), retries=1, api_key=api_key
        )
        # The polls decide the banner: one short attempt each, so that a hung load balancer
        # shows within a poll or two (the next poll is the retry).
        if poll_client is None and client is not None:
            poll_client = client
        self.poll_api = poll_client or AsyncLogClient(
            lb_url, timeout=httpx.Timeout(POLL_TIMEOUT), retries=0, api_key=api_key
        )
        self.buffer = RowBuffer(cap=MAX_ROWS)
        self.series = IngestSeries()
        self.pending: list[LogEntry] = []
        self.held: list[LogEntry] = []
        self.held_count = 0
        self.paused = False
        self.live = True
        self.reachable: bool | None = None
        """None until the first poll; then whether the load balancer answered the last one."""
        self._tail_task: asyncio.Task[None] | None = None
        self._tail_connected: Callable[[], bool] = lambda: False
        self._generation = 0
        self._loading_older = False
        self._closed = False
        self._syncing = False
        self._sending = False
        self._since_refresh: list[LogEntry] | None = None
        """While a refresh runs: what was put into the table meanwhile (re-added after it)."""
        self._refresh_due = False
        """An automatic refresh was skipped while paused: Resume runs it."""

    # -- building ----------------------------------------------------------------------------

    def build(self) -> None:
        """Create the widgets in the current NiceGUI context and start the timers."""
        ui.add_css(_CSS)
        self.dark = ui.dark_mode(None)
        self._build_header()
        with ui.column().classes("w-full q-pa-sm gap-3"):
            self._build_banner()
            with ui.row().classes("w-full items-start gap-3 flex-col lg:flex-row"):
                with ui.column().classes("w-full lg:flex-1 min-w-0 gap-3"):
                    self._build_form()
                    self._build_filters()
                    self._build_table()
                with ui.column().classes("w-full lg:w-[440px] gap-3"):
                    self._build_services()
                    self._build_stats()
        client = ui.context.client
        client.on_delete(self.aclose)
        ui.timer(FLUSH_SECONDS, self.flush)
        ui.timer(POLL_SECONDS, self.poll)
        ui.timer(0.05, self.start, once=True)

    def _build_header(self) -> None:
        with ui.header(elevated=True).classes("items-center gap-2 q-px-md q-py-xs"):
            ui.icon("receipt_long", size="md")
            ui.label("aygolog").classes("text-h6 text-weight-bold")
            ui.label(self.lb_url).classes("text-caption gt-xs").mark("lb-url").tooltip(
                "the load balancer this page talks to"
            )
            ui.space()
            self.state_badge = ui.badge("connecting", color="grey-6").mark("connection")
            self.dark_button = (
                ui.button(icon="dark_mode", on_click=self.toggle_dark)
                .props('flat round dense color=white aria-label="dark mode"')
                .tooltip("dark mode")
                .mark("dark-toggle")
            )

    def _build_banner(self) -> None:
        with ui.card().classes("w-full bg-red-1 text-red-10").props("flat bordered") as banner:
            banner.props('role="alert"')
            with ui.row().classes("items-center no-wrap gap-2"):
                ui.icon("cloud_off", color="negative", size="sm")
                self.banner_text = ui.label("").mark("banner-text")
        self.banner = banner.mark("banner")
        self.banner.set_visibility(False)

    def _build_form(self) -> None:
        with ui.card().classes("w-full"), ui.row().classes("w-full items-end gap-2"):
            self.message_input = (
                ui.input("Message", placeholder="what happened?")
                .props("outlined dense clearable")
                .classes("w-full sm:flex-1 min-w-[12rem]")
                .mark("message")
                .on("keydown.enter", self.send)
            )
            self.level_input = (
                ui.select(_LEVELS, value=LogLevel.INFO.value, label="Level")
                .props("outlined dense options-dense")
                .classes("w-28")
                .mark("level")
            )
            self.service_input = (
                ui.input("Service", placeholder="e.g. shop")
                .props("outlined dense")
                .classes("w-36")
                .mark("service")
            )
            self.attributes_input = (
                ui.input("Attributes", placeholder="key=value key2=value2")
                .props("outlined dense")
                .classes("w-full sm:w-56")
                .mark("attributes")
            )
            self.send_button = (
                ui.button("Send", icon="send", on_click=self.send).props("unelevated").mark("send")
            )

    def _build_filters(self) -> None:
        f = self.filters
        with ui.card().classes("w-full"), ui.row().classes("w-full items-end gap-2"):
            self.levels_filter = (
                ui.select(
                    _LEVELS,
                    multiple=True,
                    value=sorted((lv.value for lv in f.levels), key=_LEVELS.index),
                    label="Levels",
                    on_change=self._filters_changed,
                )
                .props("outlined dense use-chips clearable options-dense")
                .classes("w-full sm:w-60")
                .mark("filter-levels")
            )
            self.service_filter = (
                ui.input("Service", value=f.service, on_change=self._filters_changed)
                .props("outlined dense clearable debounce=400")
                .classes("w-36")
                .mark("filter-service")
            )
            self.text_filter = (
                ui.input(
                    "Search",
                    value=f.text,
                    on_change=self._filters_changed,
                    validation=lambda text: Filters(text=text or "").query_problem(),
                )
                .props('outlined dense clearable debounce=400 placeholder="level>=warning timeout"')
                .classes("w-full sm:w-72")
                .tooltip(
                    'The query language: words, "phrases", -word, OR, level>=warning, '
                    "service:(a OR b), status:>=500, user:*, _time:15m (see docs/query.md)"
                )
                .mark("filter-text")
            )
            self.range_filter = (
                ui.select(RANGES, value=f.range, label="Time", on_change=self._filters_changed)
                .props("outlined dense options-dense")
                .classes("w-32")
                .mark("filter-range")
            )
            self.since_filter = (
                ui.input(
                    "Since",
                    value=f.since,
                    placeholder="RFC 3339 or 2h",
                    on_change=self._filters_changed,
                )
                .props("outlined dense debounce=600")
                .classes("w-44")
                .mark("filter-since")
            )
            self.until_filter = (
                ui.input(
                    "Until",
                    value=f.until,
                    placeholder="RFC 3339 or 1h",
                    on_change=self._filters_changed,
                )
                .props("outlined dense debounce=600")
                .classes("w-44")
                .mark("filter-until")
            )
            ui.button(icon="filter_alt_off", on_click=self.clear_filters).props(
                "flat round dense"
            ).tooltip("clear the filters").mark("clear-filters")
        self._show_custom_range()

    def _build_table(self) -> None:
        with ui.card().classes("w-full q-pa-none"):
            with ui.row().classes("w-full items-center gap-2 q-px-md q-pt-sm"):
                ui.label("Logs").classes("text-subtitle1 text-weight-medium")
                self.count_label = ui.label("").classes("text-caption text-grey-7").mark("count")
                ui.space()
                self.live_switch = (
                    ui.switch("Live", value=True, on_change=self._live_changed)
                    .props("dense")
                    .mark("live")
                )
                self.live_badge = ui.badge("", color="grey-6").mark("live-state")
                self.pause_button = (
                    ui.button("Pause", icon="pause", on_click=self.toggle_pause)
                    .props("flat dense")
                    .mark("pause")
                )
                self.held_badge = ui.badge("", color="orange-8").mark("held")
                self.held_badge.set_visibility(False)
                ui.button("Refresh", icon="refresh", on_click=self.refresh).props(
                    "flat dense"
                ).mark("refresh")
            # Matches per level over the time range (GET /api/logs/count), above the table as in
            # every log UI; hidden when the search box cannot be counted (it ends in a pipe).
            self.histogram = (
                ui.echart(histogram_options(CountResult(buckets=[], series=[])))
                .classes("w-full aygolog-histogram")
                .style("height: 120px")
                .mark("histogram")
            )
            self.histogram.set_visibility(False)
            self.table = (
                ui.table(
                    columns=_LOG_COLUMNS,
                    rows=[],
                    row_key="id",
                    pagination={"rowsPerPage": 50},
                )
                .props('flat dense wrap-cells :rows-per-page-options="[25, 50, 100, 0]"')
                .props("hide-no-data")
                .classes("aygolog-table")
                .mark("logs")
            )
            self.table.add_slot("header", _LOG_HEADER)
            self.table.add_slot("body", _LOG_BODY)
            self.table.on("expand", self._expand)
            with ui.row().classes("w-full items-center q-px-md q-pb-sm gap-2"):
                self.empty_label = ui.label("No records found.").mark("empty")
                ui.space()
                self.older_button = (
                    ui.button("Load older", icon="history", on_click=self.load_older)
                    .props("flat dense")
                    .mark("load-older")
                )
                self.older_button.set_enabled(False)

    def _build_services(self) -> None:
        with ui.card().classes("w-full"):
            with ui.row().classes("w-full items-center"):
                ui.label("Services").classes("text-subtitle1 text-weight-medium")
                ui.space()
                self.services_label = ui.label("").classes("text-caption").mark("services-count")
            self.services_table = (
                ui.table(columns=_SERVICE_COLUMNS, rows=[], row_key="name")
                .props('flat dense no-data-label="No instances registered."')
                .classes("w-full aygolog-services")
                .mark("services")
            )
            self.services_table.add_slot("body-cell-status", _STATUS_CELL)
            self.spread_chart = (
                ui.echart(
                    {
                        "title": {"text": "requests served", "textStyle": {"fontSize": 12}},
                        "grid": {"left": 40, "right": 10, "top": 30, "bottom": 40},
                        "tooltip": {"trigger": "axis"},
                        "xAxis": {"type": "category", "data": [], "axisLabel": {"rotate": 20}},
                        "yAxis": {"type": "value", "minInterval": 1},
                        "series": [{"type": "bar", "data": [], "name": "served"}],
                    }
                )
                .classes("aygolog-chart")
                .mark("spread-chart")
            )

    def _build_stats(self) -> None:
        with ui.card().classes("w-full"):
            with ui.row().classes("w-full items-center"):
                ui.label("Ingest").classes("text-subtitle1 text-weight-medium")
                ui.space()
                self.rate_label = ui.label("").classes("text-caption").mark("rate")
            self.rate_chart = (
                ui.echart(
                    {
                        "title": {"text": "logs/s, last 5 min", "textStyle": {"fontSize": 12}},
                        "grid": {"left": 40, "right": 10, "top": 30, "bottom": 30},
                        "tooltip": {"trigger": "axis"},
                        "xAxis": {"type": "time", "axisLabel": {"hideOverlap": True}},
                        "yAxis": {"type": "value", "min": 0},
                        "series": [
                            {
                                "type": "line",
                                "data": [],
                                "name": "logs/s",
                                "showSymbol": False,
                                "areaStyle": {},
                            }
                        ],
                    }
                )
                .classes("aygolog-chart")
                .mark("rate-chart")
            )
            self.level_badges: dict[str, ui.badge] = {}
            with ui.row().classes("gap-1"):
                ui.label("Totals:").classes("text-caption")
                for level in _LEVELS:
                    self.level_badges[level] = (
                        ui.badge(f"{level} 0", color=LEVEL_COLORS[level])
                        .props("outline")
                        .mark(f"total-{level}")
                    )
                self.total_label = ui.label("").classes("text-caption").mark("total")

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the first page and start following (called once, just after the page opens)."""
        await self._follow_then_refresh()

    async def _follow_then_refresh(self) -> None:
        # Subscribe first, then query: an entry stored in between is in one or the other (or
        # both: the table keeps each id once), never in neither.
        self._restart_tail()
        deadline = time.monotonic() + TAIL_WAIT
        while self._tail_task is not None and not self._tail_connected():
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        await self.refresh()

    @property
    def closed(self) -> bool:
        """Whether the view was closed (its tab is gone)."""
        return self._closed

    async def aclose(self) -> None:
        """Stop the tail and close the client (the tab is gone)."""
        if self._closed:
            return
        self._closed = True
        await self._stop_tail()
        await self.api.aclose()
        if self.poll_api is not self.api:
            await self.poll_api.aclose()

    # -- actions -------------------------------------------------------------------------------

    async def send(self) -> None:
        """Store the form's entry; put it in the table at once."""
        if self._sending:  # a second Enter (or click) while the first is on its way
            return
        message = self.message_input.value or ""
        try:
            attributes = parse_attributes(self.attributes_input.value or "")
        except ValueError as exc:
            ui.notify(str(exc), type="negative")
            return
        service = (self.service_input.value or "").strip() or None
        self._sending = True
        self.send_button.props("loading")
        try:
            entry = await self.api.log(
                message,
                level=self.level_input.value or LogLevel.INFO.value,
                service=service,
                attributes=attributes,
            )
        except AygologError as exc:
            self._api_error(exc)
            return
        finally:
            self._sending = False
            self.send_button.props(remove="loading")
        self.message_input.value = ""
        if self.filters.matches(entry):
            self._add_newer([entry])
        ui.notify(f"Stored on {entry.instance}", type="positive", timeout=1500)

    async def refresh(self) -> None:
        """Run the filters' query again: the newest page.

        While paused this shows the latest too: what was held back is then in the table, so
        only what arrives after the query's answer stays held (and counted) for Resume.
        """
        # Each query is numbered: an answer that a newer query (other filters) overtook is
        # dropped, so the table always shows the filters last chosen.
        self._generation += 1
        generation = self._generation
        arrived: list[LogEntry] = []
        self._since_refresh = arrived
        try:
            filters = self.filters
            page = await self.api.query(filters.query, limit=PAGE_SIZE, **filters.query_filters())
        except AygologError as exc:
            self._api_error(exc)
            return
        except (ValueError, OverflowError) as exc:  # a custom time that cannot be read
            ui.notify(str(exc), type="negative")
            return
        finally:
            if self._since_refresh is arrived:
                self._since_refresh = None
        if generation != self._generation:
            return
        self._refresh_due = False
        self.buffer.replace_all(page.items, page.next_cursor)
        # what the tail (or the form) put into the table while the query ran and is newer than
        # its answer would go with the old rows: put it back
        newest = page.items[0].id if page.items else None
        self.buffer.add_newer(newer_than(arrived, newest))
        if self.held or self.held_count:
            self.held = newer_than(self.held, newest)
            self.held_count = len(self.held)
            self._render_held()
        self._render_rows()
        await self._refresh_histogram(generation)

    async def _refresh_histogram(self, generation: int) -> None:
        """Count the filters' matches per level over the range, for the chart above the table."""
        request = histogram_request(self.filters)
        result: CountResult | None = None
        if request is not None:
            text, filters = request
            try:
                result = await self.api.count(text, **filters)
            except (AygologError, ValueError, OverflowError):
                result = None  # the table's own query says what is wrong; the chart stays away
        if generation != self._generation:
            return
        if result is not None:
            self.histogram.options.update(histogram_options(result))
            self.histogram.update()
        self.histogram.set_visibility(result is not None)

    async def load_older(self) -> None:
        """The next page of older entries, through the query cursor."""
        cursor = self.buffer.cursor
        if cursor is None or self._loading_older:
            return
        generation = self._generation
        self._loading_older = True
        try:
            filters = self.filters
            page = await self.api.query(
                filters.query, limit=PAGE_SIZE, cursor=cursor, **filters.query_filters()
            )
        except AygologError as exc:
            self._api_error(exc)
            return
        finally:
            self._loading_older = False
        if generation != self._generation:
            return
        added = self.buffer.append_older(page.items, page.next_cursor)
        self._render_rows()
        if not added or self.buffer.cursor is None:
            ui.notify("Nothing older matches.", type="info", timeout=1500)

    def _expand(self, event: GenericEventArguments) -> None:
        if isinstance(event.args, str) and self.buffer.expand(event.args):
            self._render_rows()

    async def toggle_pause(self) -> None:
        """Pause the live updates (counting what arrives), or resume and show it."""
        self.paused = not self.paused
        if self.paused:
            self.pause_button.set_text("Resume")
            self.pause_button.props("icon=play_arrow")
            self._render_held()
            return
        self.pause_button.set_text("Pause")
        self.pause_button.props("icon=pause")
        held, self.held, self.held_count = self.held, [], 0
        self._render_held()
        if held:
            self._add_newer(held)
        if self._refresh_due:  # the load balancer came back while paused: catch up now
            await self.refresh()

    async def toggle_dark(self) -> None:
        """Switch between dark and light (at first "auto": the browser's preference)."""
        shown = self.dark.value
        if shown is None:
            try:
                shown = bool(
                    await ui.run_javascript(
                        "document.body.classList.contains('body--dark')", timeout=2.0
                    )
                )
            except (TimeoutError, RuntimeError):
                shown = False
        self.dark.value = not shown
        self.dark_button.props(f"icon={'light_mode' if self.dark.value else 'dark_mode'}")

    async def clear_filters(self) -> None:
        """Show everything again."""
        await self.apply_filters(Filters())

    async def apply_filters(self, filters: Filters) -> None:
        """Show `filters`: update the widgets and the URL, run the query, restart the tail."""
        self.filters = filters
        self._syncing = True
        try:
            self.levels_filter.value = sorted(
                (lv.value for lv in filters.levels), key=_LEVELS.index
            )
            self.service_filter.value = filters.service
            self.text_filter.value = filters.text
            self.range_filter.value = filters.range
            self.since_filter.value = filters.since
            self.until_filter.value = filters.until
        finally:
            self._syncing = False
        await self._filters_applied()

    async def _filters_changed(self) -> None:
        if self._syncing:
            return
        levels = frozenset(LogLevel(v) for v in self.levels_filter.value or [])
        span = self.range_filter.value or ""
        filters = Filters(
            levels=levels,
            service=(self.service_filter.value or "").strip(),
            text=self.text_filter.value or "",
            range=span,
            since=(self.since_filter.value or "").strip() if span == "custom" else "",
            until=(self.until_filter.value or "").strip() if span == "custom" else "",
        )
        try:
            problem = filters.problem()
        except OverflowError:  # defensive: `problem` already treats such a time as invalid
            problem = "the time range is out of reach"
        if problem is not None:
            self._show_custom_range(custom=span == "custom")
            if filters.query_problem() is None:  # the search box shows its own, under it
                ui.notify(problem, type="warning")
            return
        self.filters = filters
        await self._filters_applied()

    async def _filters_applied(self) -> None:
        self._show_custom_range()
        ui.navigate.history.replace(self.filters.to_url())
        self.held, self.held_count, self.pending = [], 0, []
        self._render_held()
        await self._follow_then_refresh()

    def _show_custom_range(self, *, custom: bool | None = None) -> None:
        if custom is None:
            custom = self.filters.range == "custom"
        self.since_filter.set_visibility(custom)
        self.until_filter.set_visibility(custom)

    async def _live_changed(self) -> None:
        self.live = bool(self.live_switch.value)
        self.pause_button.set_enabled(self.live)
        if self.live:
            await self._follow_then_refresh()  # catch up with what came while it was off
        else:
            self._restart_tail()

    # -- the live tail -------------------------------------------------------------------------

    def _restart_tail(self) -> None:
        old = self._tail_task
        self._tail_task = None
        if old is not None:
            old.cancel()
        if self.live and not self._closed and self.filters.live_applies:
            self._tail_task = background_tasks.create(
                self._follow(self.filters), name="aygolog-ui-tail"
            )

    async def _stop_tail(self) -> None:
        task, self._tail_task = self._tail_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _follow(self, filters: Filters) -> None:
        # The SDK's tail reconnects by itself (resuming after the last entry seen); this loop only
        # starts it again should it ever give up.
        while not self._closed:
            tail: AsyncTail | None = None
            failed = False
            try:
                tail = self.api.tail(filters.query, idle_timeout=30.0, **filters.tail_filters())
                self._tail_connected = tail.connected.is_set
                async for entry in tail:
                    self.pending.append(entry)
                    if len(self.pending) > MAX_HELD:  # nobody is flushing (tab gone or stuck)
                        del self.pending[: len(self.pending) - MAX_HELD]
            except AygologError:
                failed = True
            except Exception:  # anything else must not end the live tail for good
                failed = True
                if not self.closed:
                    log.exception("the live tail failed; starting it again")
            finally:
                self._tail_connected = lambda: False
                if tail is not None:
                    with contextlib.suppress(Exception):
                        await tail.aclose()
            if failed and not self.closed:
                await asyncio.sleep(POLL_SECONDS)

    def flush(self) -> None:
        """Put what the tail brought into the table, in one update (or count it while paused)."""
        self._render_live_state()
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        batch = [entry for entry in batch if self.filters.matches(entry)]
        if not batch:
            return
        if self.paused:
            self.held.extend(batch)
            self.held_count += len(batch)
            del self.held[: max(0, len(self.held) - MAX_HELD)]
            self._render_held()
            return
        self._add_newer(batch)

    def _add_newer(self, entries: list[LogEntry]) -> None:
        """Put entries into the table (and note them for a refresh that is running)."""
        if self._since_refresh is not None:
            self._since_refresh.extend(entries)
        if self.buffer.add_newer(entries):
            self._render_rows()

    # -- polling: services, stats, reachability -------------------------------------------------

    async def poll(self) -> None:
        """Refresh the services panel and the stats; show or hide the banner."""
        try:
            await self._poll()
        except AygologError as exc:
            self._unreachable(exc, lb_answers=not isinstance(exc, Unavailable))
        except Exception as exc:  # anything else: say so, keep the page and keep retrying
            log.exception("polling the load balancer failed")
            self._unreachable(Unavailable(f"unexpected answer ({type(exc).__name__}: {exc})"))

    async def _poll(self) -> None:
        try:
            services = await self.poll_api.services()
        except AygologError as exc:
            self._unreachable(exc, lb_answers=not isinstance(exc, Unavailable))
            return
        rows = service_rows(services)
        self.services_table.rows = rows
        self.services_table.update()
        healthy = sum(1 for row in rows if row["status"] == "healthy")
        self.services_label.set_text(f"{healthy}/{len(rows)} healthy")
        chart = self.spread_chart.options
        chart["xAxis"]["data"] = [row["name"] for row in rows]
        chart["series"][0]["data"] = [row["served"] for row in rows]
        self.spread_chart.update()
        try:
            stats = await self.poll_api.stats()
        except AygologError as exc:
            self._unreachable(exc, lb_answers=not isinstance(exc, Unavailable))
            return
        recovered = self.reachable is False
        self._reachable()
        now = time.time()
        self.series.add(now, stats.total, first_rate=stats.ingest_rate)
        rate_chart = self.rate_chart.options
        # a fixed 5-minute window, so that the axis does not jump about while it fills
        rate_chart["xAxis"]["min"] = int((now - self.series.window) * 1000)
        rate_chart["xAxis"]["max"] = int(now * 1000)
        rate_chart["series"][0]["data"] = self.series.chart_data()
        self.rate_chart.update()
        self.rate_label.set_text(f"{stats.ingest_rate:.1f} logs/s (last minute)")
        for level, badge in self.level_badges.items():
            badge.set_text(f"{level} {stats.by_level.get(level, 0)}")
        self.total_label.set_text(f"{stats.total} in all, {stats.retained} kept")
        if recovered:
            if self.paused:  # Pause holds the table still: Resume catches up
                self._refresh_due = True
            else:
                await self.refresh()

    def _reachable(self) -> None:
        self.reachable = True
        self.banner.set_visibility(False)
        self.state_badge.set_text("connected")
        self.state_badge.props("color=positive")

    def _unreachable(self, exc: AygologError, *, lb_answers: bool = False) -> None:
        self.reachable = False
        self.series.reset()
        answers = lb_answers or isinstance(exc, NoHealthyInstance)
        if answers:
            text = f"The load balancer answers, but: {describe_error(exc)}. Retrying every 2 s."
        else:
            text = (
                f"Cannot reach the load balancer at {self.lb_url} ({exc}). "
                "Retrying every 2 s; what is shown may be out of date."
            )
        self.banner_text.set_text(text)
        self.banner.set_visibility(True)
        self.state_badge.set_text("degraded" if answers else "unreachable")
        self.state_badge.props("color=negative")

    def _api_error(self, exc: AygologError) -> None:
        ui.notify(describe_error(exc), type="negative", multi_line=True)
        if isinstance(exc, Unavailable):
            self._unreachable(exc)

    # -- rendering -----------------------------------------------------------------------------

    def _render_rows(self) -> None:
        self.table.rows = self.buffer.rows
        self.table.update()
        count = len(self.buffer)
        self.empty_label.set_visibility(count == 0)
        self.count_label.set_text(f"{count} shown" if count else "")
        self.older_button.set_enabled(self.buffer.cursor is not None)

    def _render_held(self) -> None:
        self.held_badge.set_text(f"{self.held_count} new while paused")
        self.held_badge.set_visibility(self.paused)

    def _render_live_state(self) -> None:
        if not self.live or self._tail_task is None:
            text, color = "off", "grey-6"
        elif self._tail_connected():
            text, color = ("paused" if self.paused else "following"), "positive"
        else:
            text, color = "reconnecting", "warning"
        if self.live_badge.text != text:
            self.live_badge.set_text(text)
            self.live_badge.props(f"color={color}")


def build_root(
    lb_url: str,
    *,
    api_key: str | None = None,
    on_view: Callable[[LogView], object] | None = None,
) -> Callable[[Request], None]:
    """The page function for `ui.run(root)`: one `LogView` per tab, filters from the URL.

    Args:
        lb_url: the load balancer.
        api_key: sent to the load balancer when it requires API keys.
        on_view: called with each new `LogView` (tests use it to close views they opened).
    """

    def root(request: Request) -> None:
        params: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            params.setdefault(key, []).append(value)
        ui.page_title("aygolog")
        view = LogView(lb_url, Filters.from_params(params), api_key=api_key)
        view.build()
        if on_view is not None:
            on_view(view)

    return root
