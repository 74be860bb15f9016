"""The browser client in web/, driven in headless Chromium against a real gateway serving the demo model."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import msgpack
import pytest
from playwright.sync_api import (
    Browser,
    FilePayload,
    Locator,
    Page,
    Playwright,
    ViewportSize,
    WebSocket,
    expect,
    sync_playwright,
)
from starlette.applications import Starlette

from gateway.config import Settings
from gateway.connection import Connection
from tests import conftest
from tests.conftest import DemoDirs, RunningServer, image_bytes, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DESKTOP = ViewportSize(width=1100, height=800)
PHONE = ViewportSize(width=375, height=740)
# The demo model's context is 2048 tokens; with temperature 0 its random weights loop without ever
# choosing end-of-text, so a reply runs to max_tokens: long enough to stop, and always streamed.
LONG_REPLY = {"temperature": "0", "max_tokens": "1900"}
ANY_VALUE = re.compile(".+")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = launch_chromium(playwright)
        yield launched
        launched.close()


def launch_chromium(playwright: Playwright) -> Browser:
    """The system's Chromium (Playwright's own browser download is not used), headless and offline."""
    # A missing browser is a broken environment, not a reason to skip: fail loudly.
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing; install it with `apt-get install -y chromium`"
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


@dataclass
class Chat:
    """A page open on the gateway, with every WebSocket frame it sent and received."""

    page: Page
    sent: list[bytes | str] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page's scripts

    def watch(self, ws: WebSocket) -> None:
        ws.on("framesent", lambda data: self.sent.append(data))
        ws.on("framereceived", lambda data: self.received.append(_unpack(data)))

    def session_id(self) -> str:
        return str(self.page.locator("#status").get_attribute("data-session"))

    def connection(self, running: RunningServer) -> Connection:
        app = cast(Starlette, running.server.config.app)
        connections: dict[str, Connection] = app.state.connections
        return connections[self.session_id()]

    def wait_connected(self, timeout_ms: float = 15_000) -> None:
        expect(self.page.locator("#status")).to_have_attribute("data-state", "connected", timeout=timeout_ms)

    def send(self, text: str) -> None:
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")

    def last_reply(self) -> Locator:
        return self.page.locator(".message.assistant").last

    def wait_done(self, timeout_ms: float = 30_000) -> None:
        expect(self.last_reply()).to_have_attribute("data-finish-reason", ANY_VALUE, timeout=timeout_ms)

    def apply_settings(self, **values: str) -> None:
        self.page.click("#settings-toggle")
        for name, value in values.items():
            self.page.fill(f"#{name}", value)
        self.page.click("#settings-apply")
        expect(self.page.locator("#settings-state")).to_have_text("Applied to this session.")


def image_file(name: str, data: bytes, subtype: str = "png") -> FilePayload:
    return FilePayload(name=name, mimeType=f"image/{subtype}", buffer=data)


def save_screenshot(page: Page, name: str) -> None:
    """For a reviewer to look at; CI keeps test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def _unpack(data: bytes | str) -> dict[str, Any]:
    assert isinstance(data, bytes), f"the server sent a text frame: {data!r}"
    return dict(msgpack.unpackb(data, raw=False))


@pytest.fixture
def open_chat(browser: Browser) -> Iterator[Callable[..., Chat]]:
    chats: list[Chat] = []

    def open_(running: RunningServer, viewport: ViewportSize = DESKTOP) -> Chat:
        chat = Chat(browser.new_context(viewport=viewport).new_page())
        chats.append(chat)
        chat.page.on("websocket", chat.watch)
        chat.page.on("pageerror", lambda error: chat.page_errors.append(str(error)))
        chat.page.goto(running.http_url + "/")
        chat.wait_connected()
        return chat

    yield open_
    for chat in chats:
        chat.page.context.close()
        assert chat.page_errors == []


def test_reply_streams_token_by_token_then_shows_usage(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Settings go out with `configure`; Enter sends (Shift+Enter is a newline); deltas render while
    streaming; `done` shows usage and timing."""
    chat = open_chat(server)
    chat.apply_settings(system="Answer briefly.", temperature="0", max_tokens="300")
    session = chat.connection(server).session
    assert (session.system, session.defaults.temperature, session.defaults.max_tokens) == ("Answer briefly.", 0, 300)
    chat.page.evaluate(RECORD_STREAMING)
    chat.page.fill("#prompt", "Hello")
    chat.page.press("#prompt", "Shift+Enter")
    chat.page.type("#prompt", "there")
    assert chat.page.locator(".message").count() == 0
    chat.page.press("#prompt", "Enter")
    chat.wait_done()

    expect(chat.page.locator(".message.user .text")).to_have_text("Hello\nthere")
    reply = chat.last_reply()
    meta = reply.locator(".meta")
    expect(meta).to_contain_text("300 tokens")
    expect(meta).to_contain_text("first token")
    expect(meta).to_contain_text("tokens/s")
    assert reply.get_attribute("aria-busy") is None
    token_frames = [f for f in chat.received if f["type"] == "token"]
    assert len(token_frames) > 1
    assert reply.locator(".text").text_content() == "".join(f["text"] for f in token_frames)
    partial_lengths = set(chat.page.evaluate("window.streamedLengths"))
    assert len(partial_lengths) > 1, "the reply did not grow on screen while streaming"


# Records the reply's length at every DOM change while it is still marked busy (streaming).
RECORD_STREAMING = """() => {
  window.streamedLengths = [];
  new MutationObserver(() => {
    const reply = [...document.querySelectorAll(".message.assistant")].pop();
    const length = reply?.querySelector(".text").textContent.length;
    if (reply?.getAttribute("aria-busy") === "true" && length > 0) window.streamedLengths.push(length);
  }).observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
}"""


def test_images_are_sent_as_binary_attachments(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Two picked files show as thumbnails, travel as msgpack bin and reach the server's history intact."""
    chat = open_chat(server)
    red, blue = image_bytes("PNG", color=(200, 30, 30)), image_bytes("JPEG", size=(80, 60), color=(20, 40, 220))
    chat.page.set_input_files("#file-input", files=[image_file("red.png", red), image_file("blue.jpg", blue, "jpeg")])
    expect(chat.page.locator("#attachments img")).to_have_count(2)
    chat.send("What is in these pictures?")
    chat.wait_done()

    expect(chat.page.locator(".message.user .images img")).to_have_count(2)
    expect(chat.page.locator("#attachments img")).to_have_count(0)
    turn = chat.connection(server).session.exchanges[-1].turn
    assert [i.sha256 for i in turn.images] == [hashlib.sha256(b).hexdigest() for b in (red, blue)]
    assert all(isinstance(frame, bytes) for frame in chat.sent), "every frame the page sends is binary msgpack"
    sent_turn = next(f for f in map(_unpack, chat.sent) if f["type"] == "turn")
    assert sent_turn["images"] == [red, blue]

    save_screenshot(chat.page, "web-chat.png")


def test_drop_and_paste_attach_images_up_to_the_servers_limit(demo_dirs: DemoDirs, open_chat: Callable[..., Chat]) -> None:
    """Dropped and pasted images join the thumbnails; one past `max_images_per_turn` is refused."""
    running = start_server(demo_dirs.model, Settings(max_images_per_turn=2))
    try:
        chat = open_chat(running)
        png = list(image_bytes())
        chat.page.evaluate(DISPATCH_WITH_FILE, ["drop", "dropped.png", png])
        chat.page.evaluate(DISPATCH_WITH_FILE, ["paste", "pasted.png", png])
        expect(chat.page.locator("#attachments img")).to_have_count(2)
        chat.page.set_input_files("#file-input", files=[image_file("third.png", bytes(png))])
        expect(chat.page.locator("#composer-note")).to_have_text("At most 2 images per message.")
        expect(chat.page.locator("#attachments img")).to_have_count(2)
        chat.page.click("#attachments li:first-child .remove")
        expect(chat.page.locator("#attachments img")).to_have_attribute("alt", "pasted.png")
    finally:
        running.stop()


# Fires a drop on the document, or a paste, carrying one image file, as the browser does for real ones.
DISPATCH_WITH_FILE = """([kind, name, bytes]) => {
  const data = new DataTransfer();
  data.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
  const event = kind === "drop"
    ? new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true })
    : new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
  document.getElementById("prompt").dispatchEvent(event);
}"""


def test_stop_cancels_the_running_reply(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Stop sends `cancel` for the running turn; the reply is marked cancelled and kept as partial."""
    chat = open_chat(server)
    chat.apply_settings(**LONG_REPLY)
    chat.send("Tell me a long story")
    expect(chat.last_reply().locator(".text")).not_to_have_text("")  # streaming has begun
    chat.page.click("#stop")
    chat.wait_done()

    reply = chat.last_reply()
    expect(reply).to_have_attribute("data-finish-reason", "cancelled")
    expect(reply.locator(".meta")).to_contain_text("cancelled")
    expect(chat.page.locator("#send")).to_be_visible()
    cancel = next(f for f in map(_unpack, chat.sent) if f["type"] == "cancel")
    done = next(f for f in chat.received if f["type"] == "done")
    assert cancel["id"] == done["id"]
    assert done["finish_reason"] == "cancelled"
    assert done["usage"]["completion_tokens"] < 1900
    assert chat.connection(server).session.exchanges[-1].partial


def test_new_chat_clears_page_and_server_history(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """New chat sends `reset`: the conversation empties on the page and on the server."""
    chat = open_chat(server)
    chat.send("Hello")
    chat.wait_done()
    assert len(chat.connection(server).session.exchanges) == 1

    chat.page.click("#new-chat")
    expect(chat.page.locator("#messages > li")).to_have_count(0)
    assert chat.connection(server).session.exchanges == []
    assert any(_unpack(f)["type"] == "reset" for f in chat.sent)


def test_error_frames_are_shown_with_code_and_message(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """A turn the server rejects shows its error code and message, and the page can send again."""
    chat = open_chat(server)
    chat.page.set_input_files("#file-input", files=[image_file("fake.png", b"not a png")])
    chat.send("Look")

    expect(chat.page.locator(".message.error")).to_be_visible()
    error = next(f for f in chat.received if f["type"] == "error")
    assert error["code"] == "bad_image"
    expect(chat.page.locator(".message.error")).to_have_text(f"{error['code']}: {error['message']}")
    expect(chat.page.locator(".message.user.failed")).to_have_count(1)
    expect(chat.page.locator(".message.assistant")).to_have_count(0)
    chat.send("Hello again")
    chat.wait_done()


def test_reconnects_to_a_restarted_server_as_a_new_session(
    demo_dirs: DemoDirs, open_chat: Callable[..., Chat], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the server restarts on the same port the page reconnects by itself and says the session is new."""
    first = start_server(demo_dirs.model)
    second: RunningServer | None = None
    try:
        chat = open_chat(first)
        old_session = chat.session_id()
        chat.send("Hello")
        chat.wait_done()

        first.stop()
        expect(chat.page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        # conftest.start_server picks a free port; pin it so the new server is where the page looks.
        monkeypatch.setattr(conftest, "free_port", lambda: first.port)
        second = start_server(demo_dirs.model)
        chat.wait_connected(timeout_ms=30_000)

        assert chat.session_id() != old_session
        expect(chat.page.locator(".session-break")).to_contain_text("new session")
        expect(chat.page.locator(".message.stale")).to_have_count(2)
        chat.send("Hello again")
        chat.wait_done()
        assert len(chat.connection(second).session.exchanges) == 1
        save_screenshot(chat.page, "web-chat-reconnected.png")
    finally:
        for running in (first, second):
            if running is not None and running.thread.is_alive():
                running.stop()


def test_phone_width_has_no_sideways_scroll_and_labelled_controls(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """At phone width nothing overflows sideways, and every form control has an accessible name."""
    chat = open_chat(server, viewport=PHONE)
    chat.page.click("#settings-toggle")
    chat.send("Hello")
    chat.wait_done()

    assert chat.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert chat.page.evaluate(UNLABELLED_CONTROLS) == []
    chat.page.click("#settings-toggle")
    save_screenshot(chat.page, "web-chat-phone.png")


# Form controls with no accessible name: no <label>, aria-label(ledby) or, for buttons, no text.
UNLABELLED_CONTROLS = """() => [...document.querySelectorAll("input, textarea, select, button")]
  .filter((el) => !(el.labels?.length || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")
                    || (el.tagName === "BUTTON" && el.textContent.trim())))
  .map((el) => el.outerHTML)"""
