"""Try the seed's own React frontend against aygolog's load balancer; take its screenshot.

    git clone https://github.com/diegofch29/AYGO_2_Distributed_Patterns /tmp/seed
    .venv/bin/python scripts/seed_frontend.py /tmp/seed/loger-client-app
    .venv/bin/python scripts/seed_frontend.py /tmp/seed/loger-client-app --lb-url http://127.0.0.1:8080

The seed's frontend (`loger-client-app`: React + Vite) is copied to a temporary directory (the
checkout is left as it is), installed with `npm ci` and built with `npm run build`, with
VITE_API_BASE_URL / VITE_API_PORT pointing at the load balancer. The build is served from
another loopback port, so the page is another origin than the load balancer, as in the seed's
deployment. Without `--lb-url` this starts `aygolog up --no-ui` on free ports with the
environment it is given (nothing else: e.g. no AYGOLOG_CORS_ORIGINS unless you set one).

Debian's Chromium (`/usr/bin/chromium`, or `--chromium PATH`) then opens the page: a log written
beforehand by another client must be listed, and the page's form must store one (checked
through the API). It prints what it saw and the browser console, writes the screenshot
(`--out`, default docs/images/seed-frontend.png) and exits 1 when either check failed.
Needs node and npm (Vite 7 wants node >= 20.19).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import Error, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_services(lb_url: str, timeout: float = 60.0) -> None:
    """Until the LB answers and knows at least one healthy instance."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            services = httpx.get(lb_url + "/api/registration/services", timeout=1.0).json()
            if any(s.get("status") == "healthy" for s in services):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"{lb_url} has no healthy instance after {timeout:.0f} s")


def _build(app: Path, work: Path, lb_url: str) -> Path:
    """Copy the app, `npm ci` and `npm run build` it for `lb_url`; the build's directory."""
    copy = work / "app"
    shutil.copytree(app, copy, ignore=shutil.ignore_patterns("node_modules", "dist"))
    parts = urlsplit(lb_url)
    env = {
        **os.environ,
        "VITE_API_BASE_URL": f"{parts.scheme}://{parts.hostname}",
        "VITE_API_PORT": str(parts.port or (443 if parts.scheme == "https" else 80)),
    }
    for command in (["npm", "ci", "--no-audit", "--no-fund"], ["npm", "run", "build"]):
        print("$", " ".join(command), f"(VITE_API_BASE_URL={env['VITE_API_BASE_URL']}",
              f"VITE_API_PORT={env['VITE_API_PORT']})", flush=True)  # fmt: skip
        subprocess.run(command, cwd=copy, env=env, check=True, stdout=subprocess.DEVNULL)
    return copy / "dist"


def _serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", _free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def _drive(page_url: str, lb_url: str, out: Path, chromium: str) -> dict[str, object]:
    """Open the page: the list shows a log written elsewhere, the form stores one."""
    tag = uuid.uuid4().hex[:8]
    known, typed = f"written by another client {tag}", f"sent from the seed's form {tag}"
    stored = httpx.post(lb_url + "/api/log", json={"name": known})
    stored.raise_for_status()
    seen: dict[str, object] = {"page": page_url, "load_balancer": lb_url}
    console: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 520})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text.splitlines()[0]}"))
            page.goto(page_url)
            rows = page.locator("table tbody tr")
            try:
                expect(rows.filter(has_text=known)).to_be_visible(timeout=10_000)
                seen["lists_logs"] = True
            except AssertionError:
                seen["lists_logs"] = False
            page.locator("#name").fill(typed)
            page.get_by_role("button", name="Send").click()
            try:
                expect(rows.filter(has_text=typed)).to_be_visible(timeout=10_000)
                seen["form_row_shown"] = True
            except AssertionError:
                seen["form_row_shown"] = False
            page.screenshot(path=str(out))
        except Error as exc:
            seen["browser_error"] = exc.message.splitlines()[0]
        finally:
            browser.close()
    found = httpx.get(lb_url + "/api/logs", params={"q": typed}).json()["items"]
    seen["form_stored"] = [item["message"] for item in found] == [typed]
    seen["console"] = console
    seen["screenshot"] = str(out)
    return seen


def main() -> int:
    """Build the seed's frontend, serve it on another origin, drive it, print the outcome."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", type=Path, help="the seed's loger-client-app directory")
    parser.add_argument("--lb-url", help="use this load balancer instead of starting one")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "seed-frontend.png")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    if not (args.app / "package.json").is_file():
        parser.error(f"{args.app} has no package.json: give the seed's loger-client-app directory")
    up: subprocess.Popen[bytes] | None = None
    lb_url = args.lb_url
    if lb_url is None:
        port = _free_port()
        lb_url = f"http://127.0.0.1:{port}"
        up = subprocess.Popen(
            [sys.executable, "-m", "aygolog", "up", "--no-ui", "--host", "127.0.0.1",
             "--lb-port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    server: http.server.ThreadingHTTPServer | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="seed-frontend-") as work:
            dist = _build(args.app, Path(work), lb_url)
            server, page_url = _serve(dist)
            _wait_services(lb_url)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            seen = _drive(page_url, lb_url, args.out, args.chromium)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if up is not None:
            os.killpg(up.pid, signal.SIGINT)
            try:
                up.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
    print(json.dumps(seen, indent=2))
    ok = seen.get("lists_logs") and seen.get("form_row_shown") and seen.get("form_stored")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
