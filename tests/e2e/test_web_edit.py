"""Editing the conversation from the page: regenerate and flip `< n/m >`, Stop that cuts the reply to what
was shown, branch into a new chat, a reload in the middle of a branch, and axe on the controls; real
Chromium against a real server on the demo model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Locator, WebSocketRoute, expect

from tests.conftest import RunningServer
from tests.e2e import test_web as web
from tests.e2e.test_web import LONG_PROMPT, LONG_REPLY, Chat, _unpack, save_screenshot, send_and_wait, words
from tests.e2e.test_web_a11y import audit

browser = web.browser
open_chat = web.open_chat


def received(chat: Chat, kind: str) -> list[dict[str, Any]]:
    return [frame for frame in chat.received if frame["type"] == kind]


def sent(chat: Chat, kind: str) -> list[dict[str, Any]]:
    return [frame for frame in map(_unpack, chat.sent) if frame["type"] == kind]


def path(chat: Chat, running: RunningServer) -> list[tuple[str, str]]:
    """The server's active path for the page's session: (item id, text) per item."""
    return [(placed.item.id, placed.item.content.text) for placed in chat.connection(running).session.conversation.history()]


def version(item: Locator) -> Locator:
    return item.locator(".version")


def control(item: Locator, name: str) -> Locator:
    return item.get_by_role("button", name=name, exact=True)


def regenerate_last(chat: Chat) -> dict[str, Any]:
    """Press Regenerate on the last reply; the new reply's `done` once the page shows it as a new version."""
    dones = len(received(chat, "done"))
    control(chat.last_reply(), "Regenerate reply").click()
    expect(version(chat.last_reply())).to_have_text("Version 2/2", timeout=60_000)
    return received(chat, "done")[dones]


def test_regenerate_then_flip_between_the_versions(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Regenerate streams a new reply in the old one's place (`regenerate` with its id) and shows `2/2`; the
    arrow back, pressed from the keyboard, sends `switch` with the old reply's id and shows it `1/2`, which
    is the server's active path now; the focus stays on the arrows, so the keyboard flips on."""
    chat = open_chat(server)
    chat.apply_settings(max_tokens="8")
    send_and_wait(chat, "Hello")
    first = received(chat, "done")[-1]
    expect(chat.last_reply()).to_have_attribute("data-item-id", first["reply_id"])
    expect(version(chat.last_reply())).to_have_count(0)  # one version: no arrows

    second = regenerate_last(chat)
    assert [frame["item_id"] for frame in sent(chat, "regenerate")] == [first["reply_id"]]
    expect(chat.page.locator(".message.assistant")).to_have_count(1)
    expect(chat.last_reply()).to_have_attribute("data-item-id", second["reply_id"])
    expect(control(chat.last_reply(), "Next version of this reply")).to_be_disabled()

    control(chat.last_reply(), "Previous version of this reply").focus()
    chat.page.keyboard.press("Enter")
    expect(version(chat.last_reply())).to_have_text("Version 1/2")
    expect(chat.last_reply()).to_have_attribute("data-item-id", first["reply_id"])
    assert words(chat.last_reply().locator(".text").text_content() or "") == words(first["text"])
    assert sent(chat, "switch")[-1]["item_id"] == first["reply_id"]
    assert path(chat, server)[-1][0] == first["reply_id"]
    save_screenshot(chat.page, "web-edit-versions.png")

    forward = control(chat.last_reply(), "Next version of this reply")
    expect(forward).to_be_focused()  # the arrow pressed is disabled now: the focus stays on its item's controls
    chat.page.keyboard.press("Enter")
    expect(version(chat.last_reply())).to_have_text("Version 2/2")
    expect(control(chat.last_reply(), "Previous version of this reply")).to_be_focused()


@dataclass
class HeldCancel:
    """Stands between the page and the server and holds the page's `cancel` until more token frames have
    reached the page: the reply streams on past what was shown when Stop was pressed."""

    tokens: int = 3
    held: list[bytes | str] = field(default_factory=list)
    after: int = 0  # token frames forwarded since the cancel was held

    def route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        ws.on_message(lambda message: self.to_server(server, message))
        server.on_message(lambda message: self.to_page(ws, server, message))

    def to_server(self, server: WebSocketRoute, message: bytes | str) -> None:
        if _unpack(message)["type"] == "cancel":
            self.held.append(message)
        else:
            server.send(message)

    def to_page(self, ws: WebSocketRoute, server: WebSocketRoute, message: bytes | str) -> None:
        ws.send(message)
        if not self.held or _unpack(message)["type"] != "token":
            return
        self.after += 1
        if self.after >= self.tokens:
            for held in self.held:
                server.send(held)
            self.held.clear()


def test_stop_cuts_the_reply_to_what_was_shown(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """After Stop the reply grows no more on screen though tokens still arrive; after its `done` the page
    sends `truncate` with the characters it showed, so the server's reply (what the model's next prompt
    holds) is exactly the text on the page, and shorter than the one the `done` carried."""
    chat = open_chat(server, connected=False)
    chat.page.context.route_web_socket("**/ws", HeldCancel().route)
    chat.page.reload()
    chat.wait_connected()
    chat.apply_settings(**LONG_REPLY)
    chat.send(LONG_PROMPT)
    expect(chat.last_reply().locator(".text")).not_to_be_empty(timeout=60_000)
    chat.page.click("#stop")
    shown = chat.last_reply().locator(".text").text_content() or ""
    chat.wait_done()

    done = received(chat, "done")[-1]
    expect(chat.last_reply()).to_have_attribute("data-finish-reason", "cancelled")
    expect(chat.last_reply()).to_have_attribute("data-item-id", done["reply_id"], timeout=15_000)
    expect(chat.page.locator(".message.assistant .text")).to_have_text(shown)
    (truncate,) = sent(chat, "truncate")
    reply_id, kept = path(chat, server)[-1]
    assert (truncate["item_id"], reply_id) == (done["reply_id"], done["reply_id"])
    assert truncate["chars"] == len(kept) < len(done["text"]) and done["text"].startswith(kept)
    assert words(kept) == words(shown)
    assert chat.connection(server).session.conversation.history()[-1].item.content.partial


def test_branch_into_a_new_chat_lists_it_and_takes_turns_there(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Branch on the first reply sends `fork` with its id and opens the new session (a new socket resumes it)
    showing the path down to that reply; it is listed under Chats beside the first, a message sent there
    goes on from the forked path's held KV, and the first conversation opens again as it was."""
    chat = open_chat(server)
    chat.apply_settings(max_tokens="8")
    send_and_wait(chat, "Hello")
    send_and_wait(chat, "Again")
    original = chat.session_id()
    first_reply = chat.page.locator(".message.assistant").first
    reply_id = first_reply.get_attribute("data-item-id")

    control(first_reply, "Branch into a new chat from this reply").click()
    expect(chat.page.locator("#status")).not_to_have_attribute("data-session", original)
    chat.wait_connected()
    assert sent(chat, "fork")[-1]["item_id"] == reply_id
    branch = received(chat, "forked")[-1]["session"]
    expect(chat.page.locator("#status")).to_have_attribute("data-session", branch)
    expect(chat.page.locator(".message.user .text")).to_have_text(["Hello"])
    expect(chat.page.locator(".message.assistant")).to_have_attribute("data-item-id", reply_id or "")

    send_and_wait(chat, "Branch out")
    assert received(chat, "done")[-1]["usage"]["cached_tokens"] > 0
    question = chat.page.locator(".message.user").first.get_attribute("data-item-id")
    assert [item for item, _ in path(chat, server)][:2] == [question, reply_id]
    chat.page.click("#chats-toggle")
    listed = chat.page.locator("#chat-list button")
    expect(listed.locator(".chat-title")).to_have_text(["Hello (branch)", "Hello"])
    save_screenshot(chat.page, "web-edit-branch.png")

    listed.nth(1).click()
    chat.wait_connected()
    expect(chat.page.locator("#status")).to_have_attribute("data-session", original)
    expect(chat.page.locator(".message.user .text")).to_have_text(["Hello", "Again"])


def test_a_reload_mid_branch_brings_back_the_versions(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """On a branch (a reply regenerated, flipped back to `1/2`, a message sent after it) a reload shows that
    path with `1/2` on the reply, and its arrow still switches: `history` names the siblings."""
    chat = open_chat(server)
    chat.apply_settings(max_tokens="8")
    send_and_wait(chat, "Hello")
    second = regenerate_last(chat)
    control(chat.last_reply(), "Previous version of this reply").click()
    expect(version(chat.last_reply())).to_have_text("Version 1/2")
    send_and_wait(chat, "And then?")
    shown = chat.page.locator(".message .text").all_text_contents()

    chat.page.reload()
    chat.wait_connected()
    expect(chat.page.locator(".message .text")).to_have_text(shown)
    replies = chat.page.locator(".message.assistant")
    expect(version(replies.first)).to_have_text("Version 1/2")
    expect(version(replies.last)).to_have_count(0)

    control(replies.first, "Next version of this reply").click()
    expect(version(replies.first)).to_have_text("Version 2/2")
    expect(replies).to_have_count(1)
    expect(replies.first).to_have_attribute("data-item-id", second["reply_id"])


def test_the_editing_controls_pass_axe(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """A conversation with versions and every item's controls, and a message open in its editor, have no
    serious or critical axe violation, in the light theme and in the dark one at phone width."""
    problems = {}
    for scheme, viewport in (("light", web.DESKTOP), ("dark", web.PHONE)):
        chat = open_chat(server, viewport=viewport, color_scheme=scheme, bypass_csp=True)
        chat.apply_settings(max_tokens="8")
        chat.page.click("#settings-toggle")
        send_and_wait(chat, "Hello")
        regenerate_last(chat)
        problems[scheme] = audit(chat)
        control(chat.page.locator(".message.user"), "Edit message").click()
        problems[f"{scheme}, editing"] = audit(chat)
        save_screenshot(chat.page, f"web-edit-a11y-{scheme}.png")
    assert {scheme: found for scheme, found in problems.items() if found} == {}
