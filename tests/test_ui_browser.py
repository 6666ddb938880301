"""The page in headless Chromium: model info, streaming text, Stop, errors shown.

Skipped (with the reason) when Playwright or a Chromium binary is not installed:
`pip install playwright` and Debian's `chromium` package. Set UI_SCREENSHOT=path.png to keep
the mid-stream screenshot.
"""

import os
import shutil
import time

import pytest

from src.model.checkpoint import load_model
from src.server.app import create_app
from src.server.settings import ServerSettings
from tests.conftest import before_each_forward
from tests.test_server_live import LiveServer

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary on PATH (apt-get install chromium)")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"]


def test_page_streams_a_story_and_stop_aborts(tiny_checkpoint, monkeypatch, tmp_path):
    loaded = load_model(tiny_checkpoint)
    app = create_app(loaded, ServerSettings(engine="thread"))
    before_each_forward(monkeypatch, loaded.model, lambda: time.sleep(0.03))  # slow enough to see mid-stream
    with LiveServer(app) as live, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(live.url)
        page.wait_for_function("document.getElementById('model-info').textContent.includes('parameters')")
        assert "tiny.pth" in page.inner_text("#model-info")

        page.fill("#prompt", "Once upon a time <b>bold</b>")
        page.fill("#seed", "3")
        page.click("#generate")
        page.wait_for_function("document.getElementById('story').textContent.length > 60")
        assert page.is_enabled("#stop") and not page.is_enabled("#generate")
        page.screenshot(path=os.environ.get("UI_SCREENSHOT") or str(tmp_path / "mid_stream.png"))
        assert page.locator("#story b").count() == 0  # prompt and story are text, never HTML
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent === 'Stopped.'")
        assert page.is_enabled("#generate") and page.is_enabled("#copy")

        page.fill("#max_tokens", "50")
        page.evaluate("document.getElementById('temperature').value = '0.8'")
        page.fill("#prompt", "Once upon a time " * 40)  # longer than the tiny model's context
        page.click("#generate")
        page.wait_for_function("getComputedStyle(document.getElementById('error')).display === 'block'")
        assert "context is 64 tokens" in page.inner_text("#error")
        browser.close()


def test_page_runs_one_request_at_a_time_and_checks_its_fields(tiny_checkpoint, monkeypatch):
    loaded = load_model(tiny_checkpoint)
    app = create_app(loaded, ServerSettings(engine="thread"))
    before_each_forward(monkeypatch, loaded.model, lambda: time.sleep(0.03))  # slow enough to see mid-stream
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page()
        posts = []
        page.on("request", lambda r: posts.append(r) if r.url.endswith("/generate") else None)
        with LiveServer(app) as live:
            check_page_while_serving(page, live, posts)
        # the server is gone: the page says so in words
        page.click("#generate")
        page.wait_for_function("document.getElementById('error').textContent.includes('Cannot reach the server')")
        assert live.url in page.inner_text("#error")
        browser.close()


def check_page_while_serving(page, live, posts):
    page.goto(live.url)
    page.wait_for_function("document.querySelector('#presets button.active') !== null")
    assert page.get_attribute("#temperature", "min") == "0"  # greedy is reachable
    page.fill("#top_k", "7")  # a manual edit: no preset is highlighted any more
    assert page.locator("#presets button.active").count() == 0
    page.fill("#seed", "3")  # a story that runs long enough to be stopped (a random seed may end it at once)

    page.click("#generate")
    page.wait_for_function("document.getElementById('generate').textContent.startsWith('Generating')")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")  # while streaming: must not start a second request
    page.wait_for_timeout(300)
    assert len(posts) == 1
    page.click("#stop")
    page.wait_for_function("document.getElementById('status').textContent === 'Stopped.'")
    assert page.inner_text("#generate") == "Generate"

    page.fill("#top_k", "")  # empty is an error, not a silent 0
    page.click("#generate")
    page.wait_for_function("getComputedStyle(document.getElementById('error')).display === 'block'")
    assert "Top-k is empty" in page.inner_text("#error") and len(posts) == 1
    page.fill("#top_k", "40")
    favicon = page.request.get(f"{live.url}/favicon.ico")
    assert favicon.ok
