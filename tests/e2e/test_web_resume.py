"""The page keeps its conversation through reloads and dropped connections (`resume`), shows a reply still
streaming where it left off, deletes a conversation with `forget`, and switches between the conversations
kept in this browser; real Chromium against a real server on the demo model."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from playwright.sync_api import Page, WebSocketRoute, expect
from websockets.sync.client import connect

from gateway.ws.transport import transport_of
from tests.conftest import RunningServer, image_bytes
from tests.e2e import test_web as web
from tests.e2e.test_web import LONG_PROMPT, LONG_REPLY, Chat, _unpack, image_file, save_screenshot, words

browser = web.browser
open_chat = web.open_chat

CURRENT = "JSON.parse(sessionStorage.getItem('gateway.current'))"
LISTED = "JSON.parse(localStorage.getItem('gateway.conversations') ?? '[]')"


@dataclass
class Relay:
    """Stands between the page and the server (Playwright's WebSocket routing): records what the server
    sends, can send every frame twice, and can hold back `done` frames."""

    twice: bool = False
    hold_done: bool = False
    frames: list[dict[str, Any]] = field(default_factory=list)
    forwarded: int = 0  # messages sent on to the page
    held: list[tuple[WebSocketRoute, bytes | str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        server.on_message(lambda message: self.forward(ws, message))

    def forward(self, ws: WebSocketRoute, message: bytes | str) -> None:
        frame = _unpack(message)
        with self.lock:
            self.frames.append(frame)
        if self.hold_done and frame["type"] == "done":
            self.held.append((ws, message))
            return
        for _ in range(2 if self.twice else 1):
            ws.send(message)
            self.forwarded += 1

    def release(self) -> None:
        for ws, message in self.held:
            ws.send(message)
        self.held.clear()

    def since_last(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            frames = list(self.frames)
        start = max(i for i, f in enumerate(frames) if f["type"] == kind)
        return frames[start + 1 :]


@pytest.fixture
def relayed(open_chat: Callable[..., Chat]) -> Iterator[Callable[..., tuple[Chat, Relay]]]:
    def open_(running: RunningServer, **relay: Any) -> tuple[Chat, Relay]:
        chat = open_chat(running, connected=False)
        through = Relay(**relay)
        chat.page.context.route_web_socket("**/ws", through.route)
        chat.page.reload()
        chat.wait_connected()
        return chat, through

    yield open_


def wait_for(page: Page, predicate: Callable[[], bool], timeout_s: float) -> None:
    """Waits in Playwright's own loop: the relay's handlers run only while the test is inside a call."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        page.wait_for_timeout(50)


def sent_since(chat: Chat, count: int) -> list[dict[str, Any]]:
    return [_unpack(f) for f in chat.sent[count:]]


def current(page: Page) -> dict[str, Any]:
    return dict(page.evaluate(CURRENT))


def drop_connection(running: RunningServer, session: str) -> None:
    """Cut the TCP connection under the session's WebSocket, with no close frame: a network drop."""
    transport = transport_of(running.app.state.ws.connections[session].websocket)
    transport._loop.call_soon_threadsafe(transport.abort)


def try_resume(running: RunningServer, session: str, token: str) -> dict[str, Any]:
    with connect(running.ws_url, subprotocols=["gateway.msgpack"]) as ws:  # type: ignore[list-item]
        ws.recv()  # ready
        ws.send(msgpack.packb({"type": "resume", "session": session, "token": token}))
        return dict(msgpack.unpackb(ws.recv(), raw=False))


def test_a_reload_resumes_the_conversation_with_its_image_thumbnails(
    server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    """After a reload the page sends `resume` before anything else (the token in the frame, never in a
    URL or the page), then asks for the history with images and shows it, thumbnails made from the bytes."""
    chat = open_chat(server)
    session = chat.session_id()
    chat.page.set_input_files("#file-input", files=[image_file("red.png", image_bytes())])
    chat.send("What is in this picture?")
    chat.wait_done()
    reply = chat.last_reply().locator(".text").text_content()
    token = current(chat.page)["token"]

    before = len(chat.sent)
    chat.page.reload()
    chat.wait_connected()
    expect(chat.page.locator("#status")).to_have_attribute("data-session", session)
    expect(chat.page.locator(".message.user .text")).to_have_text("What is in this picture?")
    thumbnail = chat.page.locator(".message.user .images img")
    expect(thumbnail).to_have_count(1)
    expect(thumbnail).to_have_attribute("src", re.compile("^blob:"))
    assert chat.page.evaluate("document.querySelector('.message.user .images img').naturalWidth") == 64
    expect(chat.last_reply().locator(".text")).to_have_text(reply or "")
    expect(chat.page.locator(".message.assistant")).to_have_count(1)

    resume, history = sent_since(chat, before)[:2]
    assert resume == {"type": "resume", "id": resume["id"], "session": session, "token": token, "last_seq": resume["last_seq"]}
    assert history["type"] == "history" and history["include_images"] is True
    assert all(token not in socket.url for socket in chat.sockets)
    assert token not in chat.page.content()
    chat.page.locator(".message.user").scroll_into_view_if_needed()
    save_screenshot(chat.page, "web-resume-reload.png")

    chat.send("And now?")  # the resumed session takes turns: its history holds both exchanges
    chat.wait_done()
    assert len(chat.connection(server).session.exchanges) == 2


def test_a_reload_during_a_reply_picks_it_up_from_its_start(
    server: RunningServer, relayed: Callable[..., tuple[Chat, Relay]]
) -> None:
    """Reloaded mid-reply, the page resumes from before the turn's `accepted`: the server replays the reply
    from its start and the text the page assembles from tokens equals `done.text` (held back to compare)."""
    chat, relay = relayed(server)
    chat.apply_settings(**LONG_REPLY)
    chat.send(LONG_PROMPT)
    expect(chat.last_reply().locator(".text")).not_to_have_text("")  # streaming has begun
    accepted = next(f for f in relay.frames if f["type"] == "accepted")

    relay.hold_done = True
    chat.page.reload()
    chat.wait_connected()
    expect(chat.page.locator(".message.user .text")).to_have_text(LONG_PROMPT)
    expect(chat.last_reply()).to_have_attribute("aria-busy", "true")
    save_screenshot(chat.page, "web-resume-streaming.png")
    wait_for(chat.page, lambda: bool(relay.held), timeout_s=120)
    done = _unpack(relay.held[0][1])
    replayed = relay.since_last("resumed")
    assert replayed[0] == accepted, "the replay starts with the turn's `accepted`"
    seqs = [f["seq"] for f in replayed]
    assert seqs == sorted(set(seqs))
    assert "".join(f["text"] for f in replayed if f["type"] == "token") == done["text"]
    chat.page.wait_for_timeout(100)  # a render waits for the next animation frame
    assert words(chat.last_reply().locator(".text").text_content() or "") == words(done["text"])

    relay.release()
    chat.wait_done()
    expect(chat.page.locator(".message.assistant")).to_have_count(1)
    assert current(chat.page)["pending"] is None


def test_a_dropped_connection_resumes_and_the_reply_continues_in_place(
    server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    """A network drop mid-reply (TCP cut, no close frame): the page reconnects, resumes from its last seq,
    and the same reply element goes on to the end; no frame arrives twice."""
    chat = open_chat(server)
    chat.apply_settings(**LONG_REPLY)
    chat.send(LONG_PROMPT)
    expect(chat.last_reply().locator(".text")).not_to_have_text("")
    session = chat.session_id()
    chat.page.evaluate("document.querySelector('.message.assistant').dataset.marker = 'kept'")

    drop_connection(server, session)
    expect(chat.page.locator("#status")).to_have_attribute("data-state", "reconnecting")
    expect(chat.last_reply().locator(".meta")).to_contain_text("connection lost")
    chat.wait_connected(timeout_ms=30_000)
    chat.wait_done(timeout_ms=120_000)

    assert len(chat.sockets) == 2
    resume = next(f for f in map(_unpack, chat.sent) if f["type"] == "resume")
    assert resume["session"] == session and resume["last_seq"] > 1
    resumed = next(f for f in chat.received if f["type"] == "resumed")
    assert resumed["gap"] is False
    frames = [f for f in chat.received if f.get("seq") is not None and f["type"] != "ready"]
    seqs = [f["seq"] for f in frames if f["type"] != "configured" or f["seq"] > 1]
    assert len(seqs) == len(set(seqs)), "a frame arrived twice"
    done = next(f for f in chat.received if f["type"] == "done")
    assert "".join(f["text"] for f in chat.received if f["type"] == "token") == done["text"]
    expect(chat.page.locator(".message.assistant")).to_have_count(1)
    expect(chat.last_reply()).to_have_attribute("data-marker", "kept")
    assert not any(_unpack(f)["type"] == "history" for f in chat.sent[-3:])  # no gap: nothing to ask for


def test_frames_seen_already_are_ignored(server: RunningServer, relayed: Callable[..., tuple[Chat, Relay]]) -> None:
    """Every frame sent twice: the page takes the second copy (same seq) for what it is, a duplicate."""
    chat, relay = relayed(server, twice=True)
    chat.send("Hello")
    chat.wait_done()
    done = next(f for f in relay.frames if f["type"] == "done")
    assert relay.forwarded == 2 * len(relay.frames)
    expect(chat.page.locator(".message")).to_have_count(2)
    assert words(chat.last_reply().locator(".text").text_content() or "") == words(done["text"])
    assert current(chat.page)["lastSeq"] == done["seq"]


def test_a_conversation_that_cannot_be_resumed_starts_fresh_and_leaves_the_list(
    server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    """A refused `resume` (here a wrong token) keeps the socket's fresh session, says so, and drops the
    conversation from the list."""
    chat = open_chat(server)
    chat.send("Hello")
    chat.wait_done()
    old = chat.session_id()
    assert [e["session"] for e in chat.page.evaluate(LISTED)] == [old]
    chat.page.evaluate(f"sessionStorage.setItem('gateway.current', JSON.stringify({{...{CURRENT}, token: 'wrong'}}))")

    chat.page.reload()
    chat.wait_connected()
    expect(chat.page.locator(".session-break")).to_contain_text("could not be resumed")
    assert chat.session_id() != old
    assert current(chat.page)["session"] == chat.session_id()
    assert chat.page.evaluate(LISTED) == []
    chat.send("Hello again")
    chat.wait_done()
    save_screenshot(chat.page, "web-resume-failed.png")


def test_new_chat_asks_then_forgets_the_conversation_on_the_server(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """New chat asks first; Cancel changes nothing; Delete sends `forget`, and the old session can no
    longer be resumed; the page reconnects for a session with a resume token of its own."""
    chat = open_chat(server)
    chat.send("Hello")
    chat.wait_done()
    old = current(chat.page)

    chat.page.click("#new-chat")
    expect(chat.page.locator("#confirm-new-chat")).to_be_visible()
    save_screenshot(chat.page, "web-confirm-new-chat.png")
    chat.page.click("#confirm-new-chat button[value=cancel]")
    expect(chat.page.locator("#messages > li")).to_have_count(2)
    assert not any(_unpack(f)["type"] == "forget" for f in chat.sent)

    chat.page.click("#new-chat")
    chat.page.click("#confirm-new-chat button[value=confirm]")
    expect(chat.page.locator("#messages > li")).to_have_count(0)
    expect(chat.page.locator("#status")).not_to_have_attribute("data-session", old["session"])
    chat.wait_connected()
    assert any(_unpack(f)["type"] == "forget" for f in chat.sent)
    assert any(f["type"] == "forgotten" for f in chat.received)
    fresh = current(chat.page)
    assert fresh["session"] == chat.session_id() != old["session"] and fresh["token"]
    assert chat.page.evaluate(LISTED) == []
    refused = try_resume(server, old["session"], old["token"])
    assert (refused["type"], refused["code"]) == ("error", "resume_failed")

    chat.send("A new start")
    chat.wait_done()
    assert len(chat.connection(server).session.exchanges) == 1


def test_switching_between_two_conversations_shows_each_ones_history(
    server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    """New chat can keep the conversation under Chats; picking one there resumes it on a new socket and
    shows its history; the current one is marked."""
    chat = open_chat(server)
    chat.send("The first conversation")
    chat.wait_done()
    first = chat.session_id()
    chat.page.click("#new-chat")
    chat.page.click("#confirm-new-chat button[value=keep]")
    expect(chat.page.locator("#status")).not_to_have_attribute("data-session", first)
    chat.wait_connected()
    chat.send("The second conversation")
    chat.wait_done()
    second = chat.session_id()

    chat.page.click("#chats-toggle")
    items = chat.page.locator("#chat-list button")
    expect(items).to_have_count(2)
    expect(items.first).to_contain_text("The second conversation")
    expect(items.first).to_have_attribute("aria-current", "true")
    save_screenshot(chat.page, "web-chats.png")

    for session, text in ((first, "The first conversation"), (second, "The second conversation")):
        chat.page.click(f"#chat-list button[data-session='{session}']")
        expect(chat.page.locator("#status")).to_have_attribute("data-session", session)
        chat.wait_connected()
        expect(chat.page.locator(".message.user .text")).to_have_text([text])
        expect(chat.page.locator(".message.assistant")).to_have_count(1)
        expect(chat.page.locator(f"#chat-list button[data-session='{session}']")).to_have_attribute("aria-current", "true")
    assert json.dumps(chat.page.evaluate(LISTED)).count('"token"') == 2


def test_an_error_frame_seen_already_is_shown_once(server: RunningServer, relayed: Callable[..., tuple[Chat, Relay]]) -> None:
    """An `error` sent twice (a replay: the same seq again) is shown once, as token and done frames are."""
    chat, relay = relayed(server, twice=True)
    chat.page.set_input_files("#file-input", files=[image_file("holiday.png", web.bmp_bytes())])
    chat.send("Look at this")
    errors = chat.page.locator(".message.error")
    expect(errors).to_contain_text("bad_image")
    error = next(f for f in relay.frames if f["type"] == "error")
    assert error["seq"] is not None and relay.forwarded == 2 * len(relay.frames)
    chat.page.click("#attachments .remove")
    chat.send("Hello")
    chat.wait_done()
    expect(errors).to_have_count(1)
