"""The seed's React frontend works against our load balancer with no setting (issue 15, item 12).

The seed's frontend (loger-client-app, built with Vite) is served from its own origin and calls
the load balancer at VITE_API_BASE_URL:VITE_API_PORT. CI cannot fetch it from GitHub, so this
test serves a page of our own from another loopback port that makes the same requests the
seed's `src/App.tsx` makes:

- `GET /api/log` with a `Content-Type: application/json` header (so even the GET needs a CORS
  preflight), reading `name` and `timestamp` of each item, newest first, ten shown;
- `POST /api/log` with `Content-Type: application/json` and the body `{"name": ...}`, then the
  list again.

It runs in a real headless Chromium against a live LB + 3 instances + Redis started with no CORS
setting. Registration routes must not be CORS-exposed, with or without `AYGOLOG_CORS_ORIGINS`.
(The real seed frontend, built from its repository, is in docs/images/seed-frontend.png; how
it was taken is in docs/deploy-ec2.md.)
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from aygolog.embedded import free_port
from support import LiveStack, ServiceProcess

pytestmark = pytest.mark.timeout(120)

# The seed client's requests, as its App.tsx makes them (no framework: the requests are what
# matters). Text goes in with textContent: never parsed as HTML.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>seed-like client</title></head>
<body>
<form id="form"><label for="name">Name: <input type="text" name="name" id="name"></label>
<button type="submit">Send</button></form>
<h2>Log Records</h2>
<p id="status">loading</p>
<table><thead><tr><th>Name</th><th>Timestamp</th></tr></thead><tbody id="rows"></tbody></table>
<script>
const API = __API__;
const status = document.getElementById("status");
const rows = document.getElementById("rows");
async function fetchRecords() {
  try {
    const response = await fetch(API + "/api/log", {
      method: "GET", headers: {"Content-Type": "application/json"},
    });
    if (!response.ok) { status.textContent = "list failed: " + response.status; return; }
    const data = await response.json();
    rows.replaceChildren();
    data.sort((a, b) => new Date(b.timestamp).getTime() - new Date(a.timestamp).getTime())
      .slice(0, 10).forEach((record) => {
        const tr = document.createElement("tr");
        for (const text of [record.name, new Date(record.timestamp).toLocaleString()]) {
          const td = document.createElement("td");
          td.textContent = text;
          tr.appendChild(td);
        }
        rows.appendChild(tr);
      });
    status.textContent = "listed " + data.length;
  } catch (error) {
    status.textContent = "list error: " + error;
  }
}
document.getElementById("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const name = new FormData(form).get("name");
  try {
    const response = await fetch(API + "/api/log", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({ name }),
    });
    if (!response.ok) { status.textContent = "send failed: " + response.status; return; }
    await fetchRecords();
    form.reset();
  } catch (error) {
    status.textContent = "send error: " + error;
  }
});
fetchRecords();
</script>
</body></html>
"""


class PageServer:
    """Serves `PAGE` (pointed at `api`) from its own loopback port: another origin."""

    def __init__(self, api: str) -> None:
        body = PAGE.replace("__API__", json.dumps(api)).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.origin = self.url.rstrip("/")
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def seed_page(stack: LiveStack) -> Iterator[PageServer]:
    server = PageServer(stack.url)
    yield server
    server.close()


@pytest.fixture(scope="module")
def any_origin_lb(stack: LiveStack) -> Iterator[ServiceProcess]:
    """A second LB on the same registry, with `AYGOLOG_CORS_ORIGINS=*`."""
    process = ServiceProcess(
        "lb",
        env={
            "AYGOLOG_REDIS_URL": stack.redis.url,
            "AYGOLOG_REDIS_PREFIX": stack.prefix,
            "AYGOLOG_REGISTRATION_TOKEN": stack.token,
            "AYGOLOG_CORS_ORIGINS": "*",
        },
    )
    process.start(timeout=30)
    yield process
    process.close()


@pytest.fixture
def page(browser: Browser, seed_page: PageServer) -> Iterator[Page]:
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(seed_page.url)
    yield tab
    context.close()


def tag() -> str:
    return uuid.uuid4().hex[:10]


def test_the_page_is_another_origin(stack: LiveStack, seed_page: PageServer) -> None:
    assert seed_page.origin != stack.url.rstrip("/")


def test_it_lists_logs(page: Page, stack: LiveStack) -> None:
    name = f"listed {tag()}"
    stored = httpx.post(stack.url + "/api/log", json={"name": name})
    assert stored.status_code == 201, stored.text
    page.reload()
    row = page.locator("#rows tr", has_text=name)
    expect(row).to_be_visible(timeout=10_000)
    expect(page.locator("#status")).to_have_text(re.compile(r"listed \d+"), timeout=5_000)
    shown = row.locator("td").nth(1).inner_text()
    assert shown != "Invalid Date"


def test_its_form_stores_one(page: Page, stack: LiveStack) -> None:
    expect(page.locator("#status")).to_contain_text("listed", timeout=10_000)
    name = f"from the form {tag()}"
    page.locator("#name").fill(name)
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#rows tr", has_text=name)).to_be_visible(timeout=10_000)
    expect(page.locator("#name")).to_have_value("")  # the form was reset: the POST was ok
    found = httpx.get(stack.url + "/api/logs", params={"q": name}).json()["items"]
    assert [item["message"] for item in found] == [name]
    assert datetime.fromisoformat(found[0]["timestamp"])


def _preflight(url: str, origin: str, method: str = "POST") -> httpx.Response:
    return httpx.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )


def test_log_routes_answer_the_preflight(stack: LiveStack, seed_page: PageServer) -> None:
    for path, method in (("/api/log", "POST"), ("/api/log", "GET"), ("/api/logs", "GET")):
        answer = _preflight(stack.url + path, seed_page.origin, method)
        assert answer.status_code in (200, 204), (path, answer.status_code, answer.text)
        allowed = answer.headers.get("access-control-allow-origin")
        assert allowed in ("*", seed_page.origin), (path, dict(answer.headers))
        assert "content-type" in answer.headers.get("access-control-allow-headers", "").lower()


@pytest.mark.parametrize("front", ["default", "any-origin"])
def test_registration_is_not_cors_exposed(
    stack: LiveStack, any_origin_lb: ServiceProcess, seed_page: PageServer, front: str
) -> None:
    base = stack.url if front == "default" else any_origin_lb.url
    origin = seed_page.origin
    for path in ("/api/registration", "/api/registration/services", "/api/registration/x"):
        for method in ("POST", "GET", "PUT", "DELETE"):
            answer = _preflight(base + path, origin, method)
            assert "access-control-allow-origin" not in answer.headers, (path, method)
    listed = httpx.get(base + "/api/registration/services", headers={"Origin": origin})
    assert listed.status_code == 200
    assert "access-control-allow-origin" not in listed.headers


def test_a_page_cannot_read_registration(page: Page, stack: LiveStack) -> None:
    outcome = page.evaluate(
        """async (api) => {
            try {
                const r = await fetch(api + "/api/registration/services");
                return "read " + r.status;
            } catch (error) {
                return "blocked";
            }
        }""",
        stack.url,
    )
    assert outcome == "blocked"
