"""What a person sees: a real headless Chromium (Debian's) driven by Playwright, on a real
`aygolog ui` process in front of the live LB + 3 instances + Redis.

Without Chromium these tests skip, saying why; with `AYGOLOG_REQUIRE_BROWSER=1` (set by
`.ci/run`) they fail instead (the `browser` fixture, in conftest.py).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from aygolog.client import LogClient
from aygolog.embedded import free_port
from support import LiveStack, ServiceProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def web(stack: LiveStack, browser: Browser) -> Iterator[ServiceProcess]:
    """A real `aygolog ui` process talking to the live stack's load balancer."""
    process = ServiceProcess("ui", env={}, args=("--lb-url", stack.url), health_path="/")
    process.start(timeout=30)
    yield process
    process.close()


@pytest.fixture
def page(browser: Browser, web: ServiceProcess) -> Iterator[Page]:
    """A fresh tab on the page, its layout loaded; fails the test on any dialog (e.g. alert)."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    tab = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    tab.goto(web.url + "/")
    expect(tab.get_by_text("following")).to_be_visible(timeout=15_000)
    yield tab
    context.close()
    assert dialogs == [], f"the page opened dialogs: {dialogs}"


@pytest.fixture(scope="module")
def sdk(stack: LiveStack) -> Iterator[LogClient]:
    with LogClient(stack.url) as client:
        yield client


def tag() -> str:
    return uuid.uuid4().hex[:10]


def log_rows(page: Page) -> list[str]:
    return page.locator(".aygolog-row .aygolog-message").all_inner_texts()


def test_send_with_the_form_appears_without_refresh(page: Page) -> None:
    text = f"sent from the form {tag()}"
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".aygolog-row", has_text=text)).to_be_visible(timeout=5_000)
    assert log_rows(page)[0] == text  # newest first


def test_log_from_another_client_appears_within_a_second(page: Page, sdk: LogClient) -> None:
    text = f"sent by the sdk {tag()}"
    sdk.log(text, level="error", service="elsewhere")
    row = page.locator(".aygolog-row", has_text=text)
    expect(row).to_be_visible(timeout=1_000)
    expect(row.locator(".q-badge")).to_have_text("error")


def test_script_in_a_message_renders_as_text(page: Page, sdk: LogClient) -> None:
    text = f'<script>window.__xss=1</script><img src=x onerror="window.__xss=2"> {tag()}'
    sdk.log(text)
    expect(page.locator(".aygolog-row", has_text=text)).to_be_visible(timeout=5_000)
    page.locator(".aygolog-row", has_text=text).click()  # the expanded row shows it too
    expect(page.locator(".aygolog-full", has_text=text)).to_be_visible()
    assert page.evaluate("window.__xss") is None
    assert page.locator(".aygolog-row img, .aygolog-detail img, .aygolog-row script").count() == 0


def test_long_message_is_cut_in_the_table_and_whole_when_expanded(
    page: Page, sdk: LogClient
) -> None:
    word = tag()
    text = f"long {word}\n" + " ".join(f"w{n}" for n in range(300)) + " THE-END"
    sdk.log(text)
    row = page.locator(".aygolog-row", has_text=f"long {word}")
    expect(row).to_be_visible(timeout=5_000)
    expect(row).not_to_contain_text("THE-END")
    row.click()
    expect(page.locator(".aygolog-full", has_text="THE-END")).to_be_visible(timeout=3_000)
    assert page.locator(".aygolog-full", has_text="THE-END").inner_text() == text


def test_services_panel_lists_three_instances(page: Page) -> None:
    services = page.locator(".aygolog-services tbody tr", has_text="api-")
    expect(services.filter(has_text="healthy")).to_have_count(3, timeout=10_000)
    expect(page.get_by_text("3/3 healthy")).to_be_visible()


def test_filters_live_in_the_url(page: Page, web: ServiceProcess, sdk: LogClient) -> None:
    word = tag()
    sdk.log(f"shared link {word}", service="links")
    sdk.log(f"other line {word}", service="noise")
    page.get_by_label("Search", exact=True).fill(word)
    page.get_by_label("Service").nth(1).fill("links")
    page.wait_for_url(lambda url: "service=links" in url and f"query={word}" in url, timeout=5_000)
    expect(page.locator(".aygolog-row")).to_have_count(1, timeout=5_000)
    shared = page.context.new_page()
    shared.goto(page.url)
    expect(shared.locator(".aygolog-row", has_text=f"shared link {word}")).to_be_visible(
        timeout=10_000
    )
    expect(shared.locator(".aygolog-row")).to_have_count(1)
    expect(shared.get_by_label("Search", exact=True)).to_have_value(word)
    shared.close()


def test_dark_mode_toggle(page: Page) -> None:
    page.emulate_media(color_scheme="light")
    body = page.locator("body")
    dark = re.compile(r"\bbody--dark\b")
    expect(body).not_to_have_class(dark)
    page.get_by_role("button", name="dark mode").click()
    expect(body).to_have_class(dark, timeout=3_000)
    page.get_by_role("button", name="dark mode").click()
    expect(body).not_to_have_class(dark, timeout=3_000)


def test_usable_at_375_pixels(browser: Browser, web: ServiceProcess, sdk: LogClient) -> None:
    sdk.log(f"narrow {tag()} " + "long words " * 30)
    context = browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True)
    tab = context.new_page()
    try:
        tab.goto(web.url + "/")
        expect(tab.locator(".aygolog-row").first).to_be_visible(timeout=15_000)
        width = tab.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page is {width} px wide at 375"
        send = tab.get_by_role("button", name="Send")
        expect(send).to_be_in_viewport()
        box = send.bounding_box()
        assert box is not None
        assert box["x"] + box["width"] <= 375
    finally:
        context.close()


def test_unreachable_load_balancer_shows_a_banner(browser: Browser) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    process = ServiceProcess("ui", env={}, args=("--lb-url", dead), health_path="/")
    process.start(timeout=30)
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.goto(process.url + "/")
        expect(tab.get_by_role("alert")).to_contain_text(
            "Cannot reach the load balancer", timeout=15_000
        )
        expect(tab.get_by_role("button", name="Send")).to_be_visible()
    finally:
        context.close()
        process.close()


def test_killed_instance_changes_status_within_10_s(page: Page, stack: LiveStack) -> None:
    # last in the module: it takes an instance down (and starts it again after)
    row = page.locator(".aygolog-services tbody tr", has_text="api-2")
    expect(row).to_contain_text("healthy", timeout=10_000)
    stack.instances[2].kill()
    try:
        started = time.monotonic()
        expect(row.locator(".q-badge")).not_to_have_text("healthy", timeout=10_000)
        assert time.monotonic() - started < 10
        expect(page.get_by_text("2/3 healthy")).to_be_visible(timeout=5_000)
    finally:
        stack.instances[2].start(timeout=30)
        stack.wait_registered()
