"""The page when the session store fails: a `resume` answered `store_unavailable` keeps the conversation
and offers to try again, which resumes it once the store is back; real Chromium against a real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import expect

from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e import test_web as web
from tests.e2e.test_web import Chat

browser = web.browser
open_chat = web.open_chat


@pytest.fixture(scope="module")
def unloading(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """Sessions leave memory as their socket goes, so resuming one always reads the store."""
    running = start_server(demo_dirs.model, Settings(session_grace_s=0))
    yield running
    running.stop()


def test_a_resume_the_store_cannot_answer_offers_to_try_again(
    unloading: RunningServer, open_chat: Callable[..., Chat], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reload with the store failing, the page shows `store_unavailable` with a retry button and
    keeps the conversation as its current one; once the store works, the button resumes it (history shown)."""
    chat = open_chat(unloading)
    session = chat.session_id()
    chat.send("hello")
    chat.wait_done()

    async def broken(*args: object) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(unloading.app.state.ws.hub.store, "load_meta", broken)
    chat.page.reload()
    chat.wait_connected(resumed=False)  # the resume is refused: Send stays off
    retry = chat.page.get_by_role("button", name="Try resuming again")
    expect(retry).to_be_visible()
    expect(chat.page.locator(".message.error strong")).to_have_text("store_unavailable")
    assert chat.page.evaluate("JSON.parse(sessionStorage.getItem('gateway.current')).session") == session

    monkeypatch.undo()
    retry.click()
    expect(chat.page.locator("#status")).to_have_attribute("data-session", session)
    expect(chat.page.locator(".message.user .text")).to_have_text("hello")
    expect(chat.page.locator(".message.error")).to_have_count(0)
