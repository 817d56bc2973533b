"""The three web apps in a real Chromium (Debian's, driven by Playwright), against
`router demo` (router, dispatch worker, city, gateway; CURVE inside), through a fault
proxy: an order placed in the user page reaches the merchant page, is confirmed, the
rider page gets the offer and accepts, the user sees the rider move and the delivery;
chat both ways; the user page loses its connection and catches up in order; a forged
token is refused. Screenshots of each page go to ``$ROUTER_ARTIFACTS`` (default
``test-artifacts/browser``)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netem import FaultProxy
from support import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("ROUTER_ARTIFACTS", ROOT / "test-artifacts" / "browser"))

pytestmark = [pytest.mark.long, pytest.mark.timeout(300)]


@pytest.fixture
def demo(tmp_path):
    """A small demo city whose only user, merchant and rider a person can take over:
    (web port, data dir)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    data = tmp_path / "demo"
    p = subprocess.Popen([sys.executable, "-m", "router", "demo", "--seconds", "240",
                          "--speed", "1", "--riders", "1", "--merchants", "1", "--users", "1",
                          "--base-per-min", "0.001", "--workers", "1", "--data-dir", str(data)],
                         cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    banner = "".join(p.stdout.readline() for _ in range(4))
    m = re.search(r"http://127\.0\.0\.1:(\d+)/user", banner)
    assert m, banner + p.stderr.read() if p.poll() is not None else banner
    yield int(m.group(1)), data
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def online(page) -> None:
    page.wait_for_function("document.getElementById('status').textContent"
                           ".startsWith('online')", timeout=20000)


def text_of(page, selector: str) -> str:
    return page.inner_text(selector)


def wait_text(page, selector: str, needle: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = text_of(page, selector)
        if needle in t:
            return t
        time.sleep(0.2)
    shot(page, f"missing-{re.sub(r'[^a-z]+', '-', needle)}")
    raise AssertionError(f"{needle!r} never appeared in {selector}: {text_of(page, selector)!r}")


def test_an_order_through_the_three_web_apps(demo, browser):
    port, data = demo
    with FaultProxy(("127.0.0.1", port)) as net:
        base = f"http://127.0.0.1:{net.port}"
        user, merchant, rider = (browser.new_page() for _ in range(3))
        user.goto(f"{base}/user#address=user:0")
        merchant.goto(f"{base}/merchant#address=merchant:0")
        rider.goto(f"{base}/rider#address=rider:0")
        for page in (user, merchant, rider):
            online(page)
        user.click("#place")
        wait_text(merchant, "#orders", "noodles")
        shot(merchant, "merchant-incoming")
        merchant.click("#orders button:has-text('Confirm')")
        rider.wait_for_selector(".offer button:has-text('Accept')", timeout=60000)
        shot(rider, "rider-offer")
        rider.click(".offer button:has-text('Accept')")
        wait_text(user, "#timeline", "dispatch.accepted")
        # the rider's phone reports its position every 4 s: the user's map follows it
        wait_text(user, "#where", "rider rider:0", timeout=15)
        first = text_of(user, "#where")
        wait_text(user, "#where", "rider", timeout=10)
        time.sleep(4.5)
        assert text_of(user, "#where") != first, "the rider never moved on the user's map"
        shot(user, "user-rider-moving")
        # chat both ways on the order's channel
        user.fill("#chat", "no scallions please")
        user.click("#say")
        wait_text(merchant, "#orders", "no scallions please")
        merchant.fill("#chat", "noted!")
        merchant.click("#say")
        wait_text(user, "#timeline", "noted!")
        # the user's connection drops; what happens meanwhile arrives in order after
        net.outage(4.0)
        rider.click("#stops button:has-text('Picked up')")
        time.sleep(0.5)
        rider.click("#stops button:has-text('Delivered')")
        online(user)
        timeline = wait_text(user, "#timeline", "order.delivered", timeout=40)
        # newest first in the page: delivered is above picked_up
        assert timeline.index("order.delivered") < timeline.index("order.picked_up")
        shot(user, "user-delivered")
        shot(rider, "rider-done")


def test_a_forged_token_is_refused(demo, browser):
    port, _ = demo
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/user#address=user:0&token=eyJhbGciOiJIUzI1NiJ9."
              "eyJzdWIiOiJ1c2VyOjAifQ.Zm9yZ2Vk")
    page.wait_for_function("document.getElementById('status').textContent.includes('4001')",
                           timeout=15000)
    shot(page, "user-forged-token")
    assert "online" not in text_of(page, "#status")
