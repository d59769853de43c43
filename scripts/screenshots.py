"""Take the README's screenshots of the web page: desktop (1440x900) and narrow (375x812).

    .venv/bin/python scripts/screenshots.py                 # starts `aygolog up` on free ports
    .venv/bin/python scripts/screenshots.py --lb-url http://127.0.0.1:8080 --ui-url http://127.0.0.1:8000

Sends some sample logs through the SDK first (`--no-samples` to skip), then drives Debian's
Chromium (`/usr/bin/chromium`, or `--chromium PATH`) with Playwright.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from aygolog.client import LogClient

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SIZES = {"ui-desktop.png": (1440, 900), "ui-narrow.png": (375, 812)}

SAMPLES: list[tuple[str, str, str, dict[str, object]]] = [
    ("info", "shop", "order 1042 paid", {"order": 1042, "amount": 59.9, "currency": "EUR"}),
    ("debug", "shop", "cart recalculated in 12 ms", {"items": 3}),
    ("warning", "storage", "disk /var at 91% of capacity", {"mount": "/var", "used": 0.91}),
    ("info", "auth", "user alice signed in", {"user": "alice", "method": "password"}),
    ("error", "payments", "card processor timed out after 3 retries", {"provider": "acme"}),
    ("info", "shop", "order 1043 shipped", {"order": 1043, "carrier": "dhl"}),
    ("critical", "storage", "replica db-2 lost quorum", {"replica": "db-2"}),
    ("info", "auth", "<script>alert('hi')</script> is shown as text", {"xss": True}),
    (
        "warning",
        "search",
        "slow query: " + "SELECT * FROM products WHERE name ILIKE '%lamp%' " * 4,
        {"ms": 1830},
    ),
    ("trace", "search", "index segment merged", {"segments": 12}),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer 200 within {timeout:.0f} s")


def _send_samples(lb_url: str) -> None:
    rng = random.Random(7)
    with LogClient(lb_url) as client:
        for _ in range(3):
            for level, service, message, attributes in SAMPLES:
                client.log(message, level=level, service=service, attributes=attributes)
                time.sleep(rng.uniform(0.02, 0.15))


def _trickle(lb_url: str, stop: threading.Event) -> None:
    """A steady stream of logs while the screenshots are taken: the ingest chart moves."""
    rng = random.Random(11)
    with LogClient(lb_url) as client:
        while not stop.wait(rng.uniform(0.05, 0.4)):
            level, service, message, attributes = rng.choice(SAMPLES)
            client.log(message, level=level, service=service, attributes=attributes)


def _shoot(ui_url: str, out: Path, chromium: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            for name, (width, height) in SIZES.items():
                page = browser.new_page(viewport={"width": width, "height": height})
                page.emulate_media(color_scheme="light")
                page.goto(ui_url + "/")
                page.get_by_text("healthy", exact=True).first.wait_for(timeout=15_000)
                page.locator(".aygolog-row").first.wait_for(timeout=15_000)
                time.sleep(12)  # several stats samples: the ingest chart has a line
                page.locator(".aygolog-row").first.click()  # show one expanded row
                if width < 600:  # stacked: show the table rather than the form
                    page.evaluate(
                        "window.scrollTo(0, document.querySelector('.aygolog-table')"
                        ".getBoundingClientRect().top + window.scrollY - 150)"
                    )
                time.sleep(0.4)
                page.screenshot(path=str(out / name), full_page=False)
                page.close()
                print(f"wrote {out / name} ({width}x{height})")
        finally:
            browser.close()


def main() -> int:
    """Start (or use) a system, send samples, take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lb-url", help="use this load balancer instead of starting one")
    parser.add_argument("--ui-url", help="use this web page instead of starting one")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--no-samples", action="store_true")
    args = parser.parse_args()
    up: subprocess.Popen[bytes] | None = None
    lb_url, ui_url = args.lb_url, args.ui_url
    if not (lb_url and ui_url):
        lb_port, ui_port = _free_port(), _free_port()
        lb_url, ui_url = f"http://127.0.0.1:{lb_port}", f"http://127.0.0.1:{ui_port}"
        command = [sys.executable, "-m", "aygolog", "up", "--lb-port", str(lb_port)]
        up = subprocess.Popen(
            [*command, "--ui-port", str(ui_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    try:
        _wait(lb_url + "/health")
        _wait(ui_url + "/")
        stop = threading.Event()
        if not args.no_samples:
            _send_samples(lb_url)
            threading.Thread(target=_trickle, args=(lb_url, stop), daemon=True).start()
        try:
            _shoot(ui_url, args.out, args.chromium)
        finally:
            stop.set()
    finally:
        if up is not None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=20)
            except subprocess.TimeoutExpired:
                up.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
