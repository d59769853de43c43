"""The web page's logic through NiceGUI's user simulation, against a live LB + 3 instances + Redis.

No browser: `nicegui.testing.user_simulation` runs the page function in-process and lets a
simulated user type and click; the page's `AsyncLogClient` talks to the real load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from nicegui import ui
from nicegui.testing.user import User
from nicegui.testing.user_simulation import user_simulation

from aygolog.client import AsyncLogClient
from aygolog.embedded import free_port
from aygolog.ui import LogView, build_root
from support import LiveStack, ServiceProcess

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def simulate(lb_url: str, views: list[LogView] | None = None) -> AsyncIterator[User]:
    """A simulated user of the page; every view it opened (put in `views`) is closed afterwards."""
    views = [] if views is None else views
    async with user_simulation(root=build_root(lb_url, on_view=views.append)) as simulated:
        try:
            yield simulated
        finally:
            for view in views:
                await view.aclose()


@pytest.fixture
async def user(stack: LiveStack) -> AsyncIterator[User]:
    """A simulated user of a page that talks to the live stack's load balancer."""
    async with simulate(stack.url) as simulated:
        yield simulated


@pytest.fixture
async def sdk(stack: LiveStack) -> AsyncIterator[AsyncLogClient]:
    """Another client of the same system (not the page's)."""
    async with AsyncLogClient(stack.url) as client:
        yield client


def table_rows(user: User, marker: str = "logs") -> list[dict[str, Any]]:
    table = next(iter(user.find(marker=marker).elements))
    assert isinstance(table, ui.table)
    return list(table.rows)


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def messages(user: User) -> list[str]:
    return [row["message"] for row in table_rows(user)]


async def first_row_with(user: User, start: str) -> dict[str, Any]:
    await eventually(lambda: any(r["message"].startswith(start) for r in table_rows(user)))
    return next(r for r in table_rows(user) if r["message"].startswith(start))


def tag() -> str:
    return uuid.uuid4().hex[:10]


async def test_page_lists_the_three_instances(user: User) -> None:
    await user.open("/")
    await eventually(lambda: len(table_rows(user, "services")) == 3)
    rows = table_rows(user, "services")
    assert {row["status"] for row in rows} == {"healthy"}
    assert all(row["heartbeat"] != "-" for row in rows)
    await user.should_see("3/3 healthy", retries=30)
    await user.should_see("connected")


async def test_send_with_the_form_puts_the_entry_in_the_table(user: User) -> None:
    await user.open("/")
    text = f"form entry {tag()}"
    user.find(marker="message").type(text)
    user.find(marker="service").type("ui-test")
    user.find(marker="attributes").type("order=42 region=eu")
    user.find(marker="send").click()
    await eventually(lambda: text in messages(user))
    row = next(r for r in table_rows(user) if r["message"] == text)
    assert row["service"] == "ui-test"
    assert row["attributes"] == ["order=42", "region=eu"]
    assert row["instance"].startswith("api-")
    assert row is table_rows(user)[0]  # newest first
    await user.should_see("Stored on")


async def test_a_log_from_another_client_appears_live(user: User, sdk: AsyncLogClient) -> None:
    await user.open("/")
    await user.should_see("following", retries=50)
    text = f"live entry {tag()}"
    sent = time.monotonic()
    await sdk.log(text, level="warning", service="elsewhere")
    await eventually(lambda: text in messages(user), within=3.0)
    assert time.monotonic() - sent < 1.5


async def test_a_long_message_is_whole_when_its_row_is_expanded(
    user: User, sdk: AsyncLogClient
) -> None:
    word = tag()
    text = f"long {word}\n" + "word " * 400
    await sdk.log(text)
    await user.open("/")
    row = await first_row_with(user, f"long {word} word")  # one line in the table
    assert row["truncated"] is True
    assert len(row["message"]) == 120
    user.find(marker="logs").trigger("expand", row["id"])
    await eventually(lambda: table_rows(user)[0]["full_message"] == text)


async def test_pause_counts_and_resume_shows(user: User, sdk: AsyncLogClient) -> None:
    await user.open("/")
    await user.should_see("following", retries=50)
    user.find(marker="pause").click()
    await user.should_see("Resume")
    texts = [f"paused {tag()}" for _ in range(3)]
    for text in texts:
        await sdk.log(text)
    await user.should_see("3 new while paused", retries=50)
    assert not set(texts) & set(messages(user))
    user.find(marker="pause").click()
    await eventually(lambda: set(texts) <= set(messages(user)))


async def test_refresh_while_paused_shows_the_latest_and_clears_the_count(
    user: User, sdk: AsyncLogClient
) -> None:
    await user.open("/")
    await user.should_see("following", retries=50)
    user.find(marker="pause").click()
    await user.should_see("Resume")
    texts = [f"paused then refreshed {tag()}" for _ in range(2)]
    for text in texts:
        await sdk.log(text)
    await user.should_see("2 new while paused", retries=50)
    user.find(marker="refresh").click()
    await eventually(lambda: set(texts) <= set(messages(user)))
    await user.should_see("0 new while paused", retries=50)
    user.find(marker="pause").click()
    await user.should_see("Pause")
    await asyncio.sleep(0.5)
    ids = [row["id"] for row in table_rows(user)]
    assert len(ids) == len(set(ids))
    assert sum(message in texts for message in messages(user)) == 2


async def test_refresh_keeps_what_the_tail_brought_while_it_ran(
    stack: LiveStack, sdk: AsyncLogClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    views: list[LogView] = []
    async with simulate(stack.url, views) as simulated:
        await simulated.open("/")
        await simulated.should_see("following", retries=50)
        view = views[0]
        text = f"during a refresh {tag()}"
        query = view.api.query

        async def query_then_log(*args: Any, **kwargs: Any) -> Any:
            page = await query(*args, **kwargs)  # the answer is in: the entry below is not in it
            await sdk.log(text)
            await eventually(lambda: text in messages(simulated))  # the tail brought it
            return page

        monkeypatch.setattr(view.api, "query", query_then_log)
        await view.refresh()
        assert text in messages(simulated)
        ids = [row["id"] for row in table_rows(simulated)]
        assert len(ids) == len(set(ids))


async def test_a_double_enter_sends_once(user: User, sdk: AsyncLogClient) -> None:
    await user.open("/")
    text = f"enter twice {tag()}"
    message = user.find(marker="message").type(text)
    message.trigger("keydown.enter")
    message.trigger("keydown.enter")
    await eventually(lambda: text in messages(user))
    await asyncio.sleep(0.5)
    page = await sdk.query(text=text)
    assert [entry.message for entry in page.items] == [text]


async def test_the_live_tail_survives_an_unexpected_error(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    tail = AsyncLogClient.tail
    calls: list[int] = []

    def tail_failing_once(self: AsyncLogClient, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("something unexpected")
        return tail(self, *args, **kwargs)

    monkeypatch.setattr(AsyncLogClient, "tail", tail_failing_once)
    await user.open("/")
    await user.should_see("following", retries=100)
    assert len(calls) >= 2


async def test_a_time_out_of_range_in_the_url_is_left_out(user: User) -> None:
    await user.open("/?since=999999999999d&level=error")
    await user.should_see("Send")
    time_range = next(iter(user.find(marker="filter-range").elements))
    assert isinstance(time_range, ui.select)
    assert time_range.value == ""
    levels = next(iter(user.find(marker="filter-levels").elements))
    assert isinstance(levels, ui.select)
    assert levels.value == ["error"]


async def test_filters_from_the_url(user: User, sdk: AsyncLogClient) -> None:
    service = f"svc-{tag()}"
    await sdk.log("an info line", service=service)
    await sdk.log("an error line", level="error", service=service)
    await user.open(f"/?level=error&service={service}&since=1h")
    await eventually(lambda: messages(user) == ["an error line"])
    levels = next(iter(user.find(marker="filter-levels").elements))
    assert isinstance(levels, ui.select)
    assert levels.value == ["error"]
    time_range = next(iter(user.find(marker="filter-range").elements))
    assert isinstance(time_range, ui.select)
    assert time_range.value == "1h"
    # the live tail honours the filters too
    await user.should_see("following", retries=50)
    await sdk.log("another info line", service=service)
    await sdk.log("another error line", level="error", service=service)
    await eventually(lambda: messages(user) == ["another error line", "an error line"])


async def test_changing_a_filter_reruns_the_query(user: User, sdk: AsyncLogClient) -> None:
    word = tag()
    await sdk.log(f"needle {word}")
    await user.open("/")
    user.find(marker="filter-text").type(word)
    await eventually(lambda: messages(user) == [f"needle {word}"])
    user.find(marker="filter-text").clear().type(f"nothing-{word}")
    await eventually(lambda: messages(user) == [])
    await user.should_see("No records found.")


async def test_custom_time_range(user: User, sdk: AsyncLogClient) -> None:
    word = tag()
    await sdk.log(f"ranged {word}")
    await user.open(f"/?q={word}")
    await eventually(lambda: messages(user) == [f"ranged {word}"])
    time_range = next(iter(user.find(marker="filter-range").elements))
    assert isinstance(time_range, ui.select)
    time_range.value = "custom"
    await user.should_see(marker="filter-since")
    user.find(marker="filter-since").type("last tuesday")
    await eventually(lambda: any("is not a time" in m for m in user.notify.messages))
    user.find(marker="filter-since").clear().type("1h")
    await eventually(lambda: messages(user) == [f"ranged {word}"])
    user.find(marker="filter-until").type("2020-01-01T00:00:00Z")  # before since: refused
    await eventually(lambda: any("must not be after until" in m for m in user.notify.messages))
    user.find(marker="filter-since").clear().type("2019-01-01T00:00:00Z")
    await eventually(lambda: messages(user) == [])
    await user.should_see("No records found.")


async def test_load_older_follows_the_cursor(user: User, sdk: AsyncLogClient) -> None:
    service = f"bulk-{tag()}"
    await sdk.log_many({"message": f"bulk {n}", "service": service} for n in range(130))
    await user.open(f"/?service={service}")
    await eventually(lambda: len(table_rows(user)) == 100)
    assert messages(user)[0] == "bulk 129"
    user.find(marker="load-older").click()
    await eventually(lambda: len(table_rows(user)) == 130)
    assert messages(user)[-1] == "bulk 0"


async def test_refresh_shows_what_was_stored(user: User, sdk: AsyncLogClient) -> None:
    await user.open("/")
    await user.should_see("following", retries=50)
    user.find(marker="live").click()  # live mode off
    await user.should_see("off")
    text = f"refresh me {tag()}"
    await sdk.log(text)
    await asyncio.sleep(0.5)
    assert text not in messages(user)
    user.find(marker="refresh").click()
    await eventually(lambda: text in messages(user))


async def test_errors_are_notified_with_the_servers_message(user: User) -> None:
    await user.open("/")
    user.find(marker="attributes").type("not-a-pair")
    user.find(marker="send").click()
    await user.should_see("expected key=value")
    user.find(marker="attributes").clear()
    user.find(marker="message").clear()
    user.find(marker="send").click()  # an empty message: the Log API refuses it
    await eventually(lambda: any("must not be empty" in m for m in user.notify.messages))
    assert any("message: must not be empty" in m for m in user.notify.messages)


async def test_script_messages_are_kept_as_text(user: User, sdk: AsyncLogClient) -> None:
    text = f"<script>window.__xss=1</script><img src=x onerror=alert(1)> {tag()}"
    await sdk.log(text)
    await user.open("/")
    await eventually(lambda: text in messages(user))
    row = next(r for r in table_rows(user) if r["message"] == text)
    assert row["message"] == text  # passed to the table as plain text, not markup


async def test_unreachable_load_balancer_shows_a_banner() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with simulate(dead) as simulated:
        await simulated.open("/")
        await simulated.should_see("Cannot reach the load balancer", retries=100)
        await simulated.should_see("unreachable")
        await simulated.should_see("Send")  # the page is still there, not blank


async def test_a_hung_load_balancer_shows_the_banner_within_seconds() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with simulate(f"http://127.0.0.1:{port}") as simulated:
            await simulated.open("/")
            started = time.monotonic()
            await simulated.should_see("Cannot reach the load balancer", retries=150)
            assert time.monotonic() - started < 8
            await simulated.should_see("Send")
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_the_banner_says_what_the_load_balancer_answered(stack: LiveStack) -> None:
    async with simulate(stack.url + "/no-such-prefix") as simulated:  # every path: 404
        await simulated.open("/")
        await simulated.should_see("The load balancer answers, but", retries=100)
        await simulated.should_see("degraded")
        await simulated.should_not_see("Cannot reach the load balancer")


def test_aygolog_ui_serves_the_page_and_exits_cleanly_on_sigterm(stack: LiveStack) -> None:
    process = ServiceProcess("ui", env={}, args=("--lb-url", stack.url), health_path="/")
    process.start(timeout=30)
    try:
        response = httpx.get(process.url + "/?level=error&since=15m", timeout=5)
        assert response.status_code == 200
        assert "<title>aygolog</title>" in response.text
        started = time.monotonic()
        assert process.terminate(timeout=10) == 0
        assert time.monotonic() - started < 8
        assert "Traceback" not in process.output()
    finally:
        process.close()


async def test_banner_while_the_load_balancer_is_down_then_recovery(
    user: User, stack: LiveStack
) -> None:
    # last in the module: it takes the load balancer down and starts it again
    await user.open("/")
    await user.should_see("connected", retries=50)
    stack.kill_front()
    try:
        await user.should_see("Cannot reach the load balancer", retries=100)
        await user.should_see("Send")  # the rest of the page stays usable
    finally:
        await asyncio.to_thread(stack.start_front)
    await user.should_not_see(marker="banner", retries=150)
    await user.should_see("connected", retries=50)
    await user.should_see("3/3 healthy", retries=50)


async def test_the_search_box_takes_a_query_for_the_table_and_the_live_tail(
    user: User, sdk: AsyncLogClient
) -> None:
    word = tag()
    await sdk.log(f"{word} plain")
    await sdk.log(f"{word} bad", level="error")
    await user.open("/")
    await user.should_see("following", retries=50)
    user.find(marker="filter-text").type(f"{word} level:error")
    await eventually(lambda: messages(user) == [f"{word} bad"])
    await sdk.log(f"{word} live info")
    await sdk.log(f"{word} live error", level="error")
    await eventually(lambda: messages(user) == [f"{word} live error", f"{word} bad"])
    user.find(marker="filter-text").clear().type(f"{word} (")
    box = next(iter(user.find(marker="filter-text").elements))
    assert isinstance(box, ui.input)
    await eventually(lambda: (box.error or "").startswith("at "))  # shown under the box
    assert not any("query" in m for m in user.notify.messages)  # not as a toast
    assert messages(user) == [f"{word} live error", f"{word} bad"]  # the last good query stays


async def test_the_chart_above_the_table_counts_per_level(user: User, sdk: AsyncLogClient) -> None:
    word = tag()
    await sdk.log(f"{word} one")
    await sdk.log(f"{word} two", level="error")
    await sdk.log(f"{word} three", level="error")
    await user.open(f"/?query={word}")
    await eventually(lambda: len(messages(user)) == 3)
    chart = next(iter(user.find(marker="histogram").elements))
    assert isinstance(chart, ui.echart)

    def totals() -> dict[str, int]:
        return {s["name"]: sum(n for _, n in s["data"]) for s in chart.options["series"]}

    await eventually(lambda: totals() == {"info": 1, "error": 2})
    assert chart.visible
    user.find(marker="filter-text").clear().type(f"{word} | limit 2")
    await eventually(lambda: not chart.visible)
