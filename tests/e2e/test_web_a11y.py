"""An accessibility audit with axe-core (vendored from npm in tests/vendor/, injected by the test only):
no serious or critical violation in the page's states, in the light and dark themes and at 390 px."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from gateway.config import Settings
from tests.e2e import test_web as web
from tests.e2e.test_web import DESKTOP, PHONE, Chat, ReplyEngine, Site, save_screenshot, serving
from tests.e2e.test_web_render import MARKDOWN

browser = web.browser
open_chat = web.open_chat

AXE = Path(__file__).resolve().parent.parent / "vendor" / "axe.min.js"
LAYOUTS = {
    "light": ("light", DESKTOP),
    "dark": ("dark", DESKTOP),
    "phone-light": ("light", PHONE),
    "phone-dark": ("dark", PHONE),
}


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with serving(
        Settings(engine="scripted"),
        ReplyEngine({"markdown": MARKDOWN}),
    ) as served:
        yield served


@pytest.fixture(scope="module")
def keyed_site() -> Iterator[Site]:
    with serving(Settings(engine="scripted", api_key="k"), ReplyEngine({})) as served:
        yield served


def audit(chat: Chat) -> list[str]:
    """axe's serious and critical violations on the page as it is now, one line each."""
    if not chat.page.evaluate("typeof window.axe !== 'undefined'"):
        chat.page.add_script_tag(path=str(AXE))
    results: dict[str, Any] = chat.page.evaluate("axe.run(document, { resultTypes: ['violations'] })")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_chat_states_have_no_serious_violations(site: Site, open_chat: Callable[..., Chat], layout: str) -> None:
    """The welcome, a conversation with markdown and code, the list of chats, the settings, a refused
    message and the New chat dialog pass axe in this theme and width (contrast included)."""
    color_scheme, viewport = LAYOUTS[layout]
    chat = open_chat(site, viewport=viewport, color_scheme=color_scheme, bypass_csp=True)
    problems = {"welcome": audit(chat)}
    chat.send("markdown")
    chat.wait_done()
    chat.page.click("#chats-toggle")  # lists the conversation, before the clear below
    expect(chat.page.locator("#chat-list button")).to_have_count(1)
    chat.page.evaluate("localStorage.clear()")
    chat.page.click("#settings-toggle")
    problems["conversation, chats and settings"] = audit(chat)
    save_screenshot(chat.page, f"web-a11y-{layout}.png")
    chat.page.click("#new-chat")
    expect(chat.page.locator("#confirm-new-chat")).to_be_visible()
    problems["new chat dialog"] = audit(chat)
    save_screenshot(chat.page, f"web-a11y-{layout}-dialog.png")
    assert {state: found for state, found in problems.items() if found} == {}


@pytest.mark.parametrize("layout", ["light", "phone-dark"])
def test_connection_problem_has_no_serious_violations(keyed_site: Site, open_chat: Callable[..., Chat], layout: str) -> None:
    """The banner asking for an API key passes axe too."""
    color_scheme, viewport = LAYOUTS[layout]
    chat = open_chat(keyed_site, viewport=viewport, color_scheme=color_scheme, bypass_csp=True, connected=False)
    expect(chat.page.locator("#key-form")).to_be_visible()
    assert audit(chat) == []
    save_screenshot(chat.page, f"web-a11y-{layout}-key.png")
