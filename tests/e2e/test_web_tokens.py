"""The browser page with an operator's token URL: it connects on a scoped token from that backend, one per
attempt, with no key typed in and none stored in the tab."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Route, expect

from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e import test_web as web
from tests.e2e.test_tokens import KEY, post_token
from tests.e2e.test_web import Chat

browser = web.browser  # the web tests' module-scoped Chromium

TOKEN_PATH = "/app/realtime-token"  # the web app's own backend, on the page's origin


@pytest.fixture(scope="module")
def server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    settings = Settings(api_key=KEY, token_secret="web-token-secret-0123456789", web_token_url=TOKEN_PATH)
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


def test_the_page_connects_with_a_token_from_the_operators_backend(browser: Browser, server: RunningServer) -> None:
    """No key field: the page POSTs to the token URL, opens with the token in a `bearer.` subprotocol, and a
    reload (a new attempt) asks for a fresh single-use token."""
    minted: list[str] = []

    def backend(route: Route) -> None:  # stands in for the app's backend, which holds the key
        assert route.request.method == "POST"
        status, answer = post_token(server, {"ttl_s": 30})
        assert status == 200, answer
        minted.append(answer["token"])
        route.fulfill(status=200, content_type="application/json", body=json.dumps({"token": answer["token"]}))

    context = browser.new_context()
    try:
        chat = Chat(context.new_page())
        chat.page.route(f"**{TOKEN_PATH}", backend)
        chat.page.on("websocket", chat.watch)
        chat.page.on("pageerror", lambda error: chat.page_errors.append(str(error)))
        chat.page.goto(server.http_url + "/")
        chat.wait_connected()
        expect(chat.page.locator("#key-form")).to_be_hidden()
        chat.send("Hello")
        chat.wait_done()
        chat.page.reload()
        chat.wait_connected()
        assert len(minted) == 2 and minted[0] != minted[1]
        assert chat.page.evaluate("sessionStorage.getItem('gateway.apiKey')") is None
        assert all(token not in socket.url for socket in chat.sockets for token in minted)
        assert chat.page_errors == []
    finally:
        context.close()
