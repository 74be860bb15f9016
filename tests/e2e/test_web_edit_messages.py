"""Editing an earlier message in place, deleting messages and replies, a refused regenerate, and reloads
(while an edit's reply streams, and from the store) from the page; real Chromium against a real server on
the demo model."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
from playwright.sync_api import WebSocketRoute, expect

from tests.conftest import RunningServer, image_bytes
from tests.e2e import test_web as web, test_web_store
from tests.e2e.test_web import LONG_PROMPT, LONG_REPLY, Chat, _unpack, image_file, save_screenshot
from tests.e2e.test_web_edit import control, path, received, regenerate_last, send_and_wait, sent, version

browser = web.browser
open_chat = web.open_chat
unloading = test_web_store.unloading  # sessions leave memory as their socket goes: a reload reads the store


def test_edit_an_earlier_message_then_flip_back_to_the_old_branch(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Edit opens the message in place (focus in its box; Escape puts it back); Enter sends `edit` with the
    new text and `respond`, the exchanges after it leave the page, a reply streams, and the message shows
    `2/2`; flipping back shows the old message with what followed it, as it was left."""
    chat = open_chat(server)
    chat.apply_settings(max_tokens="8")
    send_and_wait(chat, "Hello")
    send_and_wait(chat, "Again")
    before = chat.page.locator(".message .text").all_text_contents()
    first = chat.page.locator(".message.user").first
    old_id = first.get_attribute("data-item-id")

    control(first, "Edit message").click()
    box = chat.page.get_by_role("textbox", name="New version of the message")
    expect(box).to_be_focused()
    expect(box).to_have_value("Hello")
    chat.page.keyboard.press("Escape")
    expect(box).to_have_count(0)
    expect(control(first, "Edit message")).to_be_focused()

    control(first, "Edit message").click()
    box.fill("Hi there")
    box.press("Enter")
    replies = chat.page.locator(".message.assistant[data-finish-reason]")
    expect(version(chat.page.locator(".message.user").first)).to_have_text("Version 2/2", timeout=60_000)
    expect(chat.page.locator(".message.user .text")).to_have_text(["Hi there"])
    expect(replies).to_have_count(1)
    edit = sent(chat, "edit")[-1]
    assert (edit["item_id"], edit["text"], edit["respond"]) == (old_id, "Hi there", True)
    done = received(chat, "done")[-1]
    assert [item for item, _ in path(chat, server)] == [received(chat, "accepted")[-1]["item_id"], done["reply_id"]]
    save_screenshot(chat.page, "web-edit-message.png")

    control(chat.page.locator(".message.user").first, "Previous version of this message").click()
    expect(version(chat.page.locator(".message.user").first)).to_have_text("Version 1/2")
    expect(chat.page.locator(".message .text")).to_have_text(before)


def test_an_edit_keeps_the_messages_images(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Editing the text of a message with an image keeps its thumbnail on the page and the image on the server."""
    chat = open_chat(server)
    chat.apply_settings(max_tokens="4")
    chat.page.set_input_files("#file-input", files=[image_file("red.png", image_bytes())])
    send_and_wait(chat, "What is this?")
    control(chat.page.locator(".message.user"), "Edit message").click()
    chat.page.get_by_role("textbox", name="New version of the message").fill("And this?")
    chat.page.get_by_role("button", name="Send the new version").click()
    user = chat.page.locator(".message.user")
    expect(version(user)).to_have_text("Version 2/2", timeout=60_000)
    expect(user.locator(".images img")).to_have_count(1)
    assert user.evaluate("item => item.querySelector('.images img').naturalWidth") == 64
    assert len(chat.connection(server).session.conversation.history()[0].item.content.images) == 1


def test_delete_a_regenerated_reply_then_a_message(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Delete on a regenerated reply sends `delete` with its id and shows the version before it, alone again;
    Delete on a message takes it off the page and the server's path."""
    chat = open_chat(server)
    chat.apply_settings(max_tokens="8")
    send_and_wait(chat, "Hello")
    first = received(chat, "done")[-1]
    second = regenerate_last(chat)

    control(chat.last_reply(), "Delete reply").click()
    expect(chat.last_reply()).to_have_attribute("data-item-id", first["reply_id"])
    expect(version(chat.last_reply())).to_have_count(0)
    assert sent(chat, "delete")[-1]["item_id"] == second["reply_id"]
    assert [item for item, _ in path(chat, server)][-1] == first["reply_id"]

    send_and_wait(chat, "Again")
    again = chat.page.locator(".message.user").last
    again_id = again.get_attribute("data-item-id")
    control(again, "Delete message").click()
    expect(chat.page.locator(".message.user .text")).to_have_text(["Hello"])
    assert again_id not in [item for item, _ in path(chat, server)]


def test_a_reload_while_an_edits_reply_streams_ends_on_the_new_branch(
    server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    """A reload while an edited message's reply streams picks the reply up; once it ends the page shows the
    server's path: the new message at `2/2` and its reply, nothing of the old branch."""
    chat = open_chat(server)
    chat.apply_settings(max_tokens="8")
    send_and_wait(chat, "Hello")
    send_and_wait(chat, "Again")
    chat.apply_settings(**LONG_REPLY)
    control(chat.page.locator(".message.user").first, "Edit message").click()
    chat.page.get_by_role("textbox", name="New version of the message").fill(LONG_PROMPT)
    chat.page.keyboard.press("Enter")
    expect(chat.last_reply().locator(".text")).not_to_be_empty(timeout=60_000)

    chat.page.reload()
    chat.wait_connected()
    expect(version(chat.page.locator(".message.user").first)).to_have_text("Version 2/2", timeout=120_000)
    expect(chat.page.locator(".message.user .text")).to_have_text([LONG_PROMPT])
    expect(chat.page.locator(".message.assistant")).to_have_count(1)
    done = received(chat, "done")[-1]
    assert [item for item, _ in path(chat, server)][-1] == done["reply_id"]
    expect(chat.last_reply()).to_have_attribute("data-item-id", done["reply_id"])


def unknown_regenerated_item(ws: WebSocketRoute) -> None:
    """Between the page and the server: a `regenerate` goes on naming an item the session does not have."""
    server = ws.connect_to_server()

    def to_server(message: bytes | str) -> None:
        frame = _unpack(message)
        server.send(msgpack.packb({**frame, "item_id": "unknown1"}) if frame["type"] == "regenerate" else message)

    ws.on_message(to_server)
    server.on_message(ws.send)


def test_a_refused_regenerate_puts_the_conversation_back(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """A regenerate the server refuses (`not_found`) is shown as an error, the page shows the server's path
    again in place of the reply it took away, and the next message goes through."""
    chat = open_chat(server, connected=False)
    chat.page.context.route_web_socket("**/ws", unknown_regenerated_item)
    chat.page.reload()
    chat.wait_connected()
    chat.apply_settings(max_tokens="8")
    send_and_wait(chat, "Hello")
    reply_id = chat.last_reply().get_attribute("data-item-id")

    control(chat.last_reply(), "Regenerate reply").click()
    expect(chat.page.locator(".message.error")).to_contain_text("not_found")
    expect(chat.page.locator(".message.assistant")).to_have_attribute("data-item-id", reply_id or "")
    expect(chat.page.locator("#send")).to_be_visible()
    send_and_wait(chat, "Again")
    expect(chat.page.locator(".message.user .text")).to_have_text(["Hello", "Again"])
    expect(chat.page.locator(".message.error")).to_have_count(1)  # the error stays where it was shown


def test_a_reload_resumed_from_the_store_shows_the_versions(unloading: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """With the session read back from the store after a reload, the reply flipped to `1/2` shows `1/2`
    again, and its arrow switches to the stored sibling."""
    chat = open_chat(unloading)
    chat.apply_settings(max_tokens="8")
    send_and_wait(chat, "Hello")
    second = regenerate_last(chat)
    control(chat.last_reply(), "Previous version of this reply").click()
    expect(version(chat.last_reply())).to_have_text("Version 1/2")
    shown = chat.page.locator(".message .text").all_text_contents()

    chat.page.reload()
    chat.wait_connected()
    expect(chat.page.locator(".message .text")).to_have_text(shown)
    expect(version(chat.last_reply())).to_have_text("Version 1/2")
    control(chat.last_reply(), "Next version of this reply").click()
    expect(chat.last_reply()).to_have_attribute("data-item-id", second["reply_id"])
    expect(version(chat.last_reply())).to_have_text("Version 2/2")
