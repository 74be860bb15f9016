"""Why the page is not connected, in its own words: an API key to enter, a wrong key, a model loading
or failed, an origin refused, a lost connection with a real countdown, all learnt from /status."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest
from playwright.sync_api import Route, expect

from gateway.config import Settings
from gateway.engine.contract import Engine
from gateway.engine.scripted import ScriptedEngine
from tests import conftest
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e import test_web as web
from tests.e2e.test_web import Chat, save_screenshot, serving

# Re-exported fixtures from the web tests' module (pytest finds fixtures among module attributes).
browser = web.browser
open_chat = web.open_chat


def test_api_key_field_connects_to_a_keyed_server_and_explains_a_wrong_key(
    demo_dirs: DemoDirs, open_chat: Callable[..., Chat]
) -> None:
    """Without a key the page asks for one (focused field, no endless retrying); a wrong key is named as
    such; the right one connects, travels only as a subprotocol, and survives a reload of the tab."""
    running = start_server(demo_dirs.model, Settings(api_key="k-Secret_42"))
    try:
        chat = open_chat(running, connected=False)
        banner = chat.page.locator("#connection")
        expect(banner).to_contain_text("This server needs an API key.")
        expect(chat.page.locator("#status")).to_have_attribute("data-state", "blocked")
        expect(chat.page.locator("#api-key")).to_be_focused()
        save_screenshot(chat.page, "web-key-needed.png")

        chat.page.fill("#api-key", "not-the-key")
        chat.page.press("#api-key", "Enter")
        expect(banner).to_contain_text("The server did not accept this API key.")
        assert chat.sockets == [], "no handshake is tried with a key /status already refused"
        save_screenshot(chat.page, "web-key-wrong.png")

        chat.page.fill("#api-key", "k-Secret_42")
        chat.page.click("#key-form button")
        chat.wait_connected()
        expect(banner).to_be_hidden()
        assert chat.page.evaluate("sessionStorage.getItem('gateway.apiKey')") == "k-Secret_42"
        assert all("k-Secret_42" not in socket.url for socket in chat.sockets)
        chat.page.reload()
        chat.wait_connected()
        chat.send("Hello")
        chat.wait_done()
        chat.open_settings()
        chat.page.click("#forget-key")
        assert chat.page.evaluate("sessionStorage.getItem('gateway.apiKey')") is None
    finally:
        running.stop()


def test_a_key_a_browser_cannot_send_is_explained(demo_dirs: DemoDirs, open_chat: Callable[..., Chat]) -> None:
    """A key with a space cannot be a subprotocol: the page says so instead of failing silently."""
    running = start_server(demo_dirs.model, Settings(api_key="k"))
    try:
        chat = open_chat(running, connected=False)
        chat.page.fill("#api-key", "two words")
        chat.page.press("#api-key", "Enter")
        expect(chat.page.locator("#connection-text")).to_contain_text("no spaces")
    finally:
        running.stop()


def test_loading_model_is_shown_then_the_page_connects_by_itself(open_chat: Callable[..., Chat]) -> None:
    """While the model loads the page says so and polls; when it is ready the page connects unaided."""
    release = threading.Event()

    def slow_factory(settings: Settings) -> Engine:
        release.wait(30)
        return ScriptedEngine()

    with serving(Settings(engine="scripted"), factory=slow_factory) as site:
        chat = open_chat(site, connected=False)
        expect(chat.page.locator("#connection-text")).to_have_text("The model is still loading.")
        expect(chat.page.locator("#status-text")).to_have_text("Model loading")
        save_screenshot(chat.page, "web-loading.png")
        release.set()
        chat.wait_connected()
        expect(chat.page.locator("#connection")).to_be_hidden()
        expect(chat.page.locator("#demo-badge")).to_be_hidden()  # the scripted engine is no demo model


def test_failed_model_shows_its_cause(open_chat: Callable[..., Chat]) -> None:
    """A model that failed to load is reported with the server's reason, not as an endless reconnect."""

    def failing_factory(settings: Settings) -> Engine:
        raise RuntimeError("no config.json in /models/missing")

    with serving(Settings(engine="scripted"), factory=failing_factory) as site:
        chat = open_chat(site, connected=False)
        expect(chat.page.locator("#connection-text")).to_have_text(
            "The model failed to load: no config.json in /models/missing.", timeout=15_000
        )
        expect(chat.page.locator("#status-text")).to_have_text("Model failed to load")
        save_screenshot(chat.page, "web-load-failed.png")


def test_refused_origin_is_explained(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """When /status says the page's origin is refused (a proxy that rewrites Host, say) the page names its
    origin and the setting. (Chromium always sends the page's true origin, so the verdict is routed here;
    tests/e2e/test_status.py checks that the server's verdict matches its handshake.)"""
    chat = open_chat(server, connected=False)
    refused = {"state": "ready", "model": "m", "demo": False, "auth": "none", "origin_allowed": False, "error": None}

    def answer(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(refused))

    chat.page.route("**/status?*", answer)
    chat.page.reload()
    expect(chat.page.locator("#connection-text")).to_contain_text(f"does not accept pages from {server.http_url}")
    expect(chat.page.locator("#connection-text")).to_contain_text("allowed_origins")
    expect(chat.page.locator("#status-text")).to_have_text("Origin refused")


def test_reconnects_with_a_real_countdown_and_resumes_after_a_restart(
    demo_dirs: DemoDirs, open_chat: Callable[..., Chat], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the server goes away the page counts down to each retry, second by second; when it is back on
    the same port and data directory the page resumes the same session, told of the gap, and shows its
    history again from the store."""
    first = start_server(demo_dirs.model)
    second: RunningServer | None = None
    try:
        chat = open_chat(first)
        old_session = chat.session_id()
        chat.send("Hello")
        chat.wait_done()

        first.stop()
        expect(chat.page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        retry = chat.page.locator("#connection-retry")
        expect(retry).to_have_text("Reconnecting in 3 s…", timeout=30_000)
        expect(retry).to_have_text("Reconnecting in 2 s…", timeout=2_000)
        expect(chat.page.locator("#connection-text")).to_have_text("Cannot reach the server.")
        save_screenshot(chat.page, "web-reconnecting.png")
        # conftest.start_server picks a free port; pin it so the new server is where the page looks.
        monkeypatch.setattr(conftest, "free_port", lambda: first.port)
        second = start_server(demo_dirs.model, Settings(data_dir=first.settings.data_dir))
        chat.wait_connected(timeout_ms=30_000)

        expect(chat.page.locator("#status")).to_have_attribute("data-session", old_session)
        resumed = next(f for f in chat.received if f["type"] == "resumed")
        assert resumed["gap"] is True  # a restart keeps the history, not the frames
        expect(chat.page.locator(".message.user .text")).to_have_text(["Hello"])
        expect(chat.page.locator(".message.assistant")).to_have_count(1)
        chat.send("Hello again")
        chat.wait_done()
        assert len(chat.connection(second).session.exchanges) == 2
        save_screenshot(chat.page, "web-chat-reconnected.png")
    finally:
        for running in (first, second):
            if running is not None and running.thread.is_alive():
                running.stop()
