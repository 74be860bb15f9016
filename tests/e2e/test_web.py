"""The browser client in web/, driven in headless Chromium against a real gateway serving the demo model.
The fixtures here (the browser, a chat page, a server around a scripted engine) serve tests/e2e/test_web_*.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import msgpack
import pytest
from PIL import Image
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

from gateway.app import create_app
from gateway.config import Settings
from gateway.engine.contract import GenerationRequest, GenerationResult, TurnHandle, TurnSink
from gateway.engine.scripted import ScriptedEngine
from gateway.ws.connection import Connection
from tests.conftest import DemoDirs, RunningServer, image_bytes, serve_app, start_server

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
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DESKTOP = ViewportSize(width=1100, height=800)
PHONE = ViewportSize(width=390, height=844)
# With temperature 0 the demo model's random weights fall into a loop that never picks end-of-text
# for this prompt, so the reply runs to max_tokens: long enough to stop, and always streamed.
LONG_PROMPT = "Write a long poem"
LONG_REPLY = {"temperature": "0", "max_tokens": "1500"}
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
    sockets: list[WebSocket] = field(default_factory=list)

    def watch(self, ws: WebSocket) -> None:
        self.sockets.append(ws)
        ws.on("framesent", lambda data: self.sent.append(data))
        ws.on("framereceived", lambda data: self.received.append(_unpack(data)))

    def session_id(self) -> str:
        return str(self.page.locator("#status").get_attribute("data-session"))

    def connection(self, running: RunningServer) -> Connection:
        app = cast(Starlette, running.server.config.app)
        connections: dict[str, Connection] = app.state.ws.connections
        return connections[self.session_id()]

    def wait_connected(self, timeout_ms: float = 15_000, resumed: bool = True) -> None:
        """Connected, and (`resumed`) the page's session resumed: Send stays disabled until the `resume` is
        answered (a message sent before that is kept in the box, not sent)."""
        expect(self.page.locator("#status")).to_have_attribute("data-state", "connected", timeout=timeout_ms)
        if resumed:
            expect(self.page.locator("#send")).to_be_enabled(timeout=timeout_ms)

    def send(self, text: str) -> None:
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")

    def last_reply(self) -> Locator:
        return self.page.locator(".message.assistant").last

    def wait_done(self, timeout_ms: float = 60_000) -> None:
        expect(self.last_reply()).to_have_attribute("data-finish-reason", ANY_VALUE, timeout=timeout_ms)

    def open_settings(self) -> None:
        if self.page.locator("#settings").is_hidden():
            self.page.click("#settings-toggle")

    def apply_settings(self, **values: str) -> None:
        self.open_settings()
        for name, value in values.items():
            self.page.fill(f"#{name}", value)
        self.page.click("#settings-apply")
        expect(self.page.locator("#settings-state")).to_have_text("Applied to this session.")

    def clipboard(self) -> str:
        return str(self.page.evaluate("navigator.clipboard.readText()"))


def image_file(name: str, data: bytes, subtype: str = "png") -> FilePayload:
    return FilePayload(name=name, mimeType=f"image/{subtype}", buffer=data)


def save_screenshot(page: Page, name: str) -> None:
    """For a reviewer to look at; CI keeps test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def _unpack(data: bytes | str) -> dict[str, Any]:
    assert isinstance(data, bytes), f"the server sent a text frame: {data!r}"
    return dict(msgpack.unpackb(data, raw=False))


class Served(Protocol):
    """Anything `open_chat` can open: a RunningServer, or a Site from `serving`."""

    @property
    def http_url(self) -> str: ...


@dataclass(frozen=True)
class Site:
    http_url: str


@pytest.fixture
def open_chat(browser: Browser) -> Iterator[Callable[..., Chat]]:
    chats: list[Chat] = []

    def open_(
        running: Served,
        viewport: ViewportSize = DESKTOP,
        color_scheme: str = "light",
        connected: bool = True,
        bypass_csp: bool = False,
    ) -> Chat:
        context = browser.new_context(
            viewport=viewport,
            color_scheme=color_scheme,  # type: ignore[arg-type]
            bypass_csp=bypass_csp,  # only to inject test scripts (axe) into the page
            permissions=["clipboard-read", "clipboard-write"],
        )
        chat = Chat(context.new_page())
        chats.append(chat)
        chat.page.on("websocket", chat.watch)
        chat.page.on("pageerror", lambda error: chat.page_errors.append(str(error)))
        chat.page.goto(running.http_url + "/")
        if connected:
            chat.wait_connected()
        return chat

    yield open_
    for chat in chats:
        chat.page.context.close()
        assert chat.page_errors == []


# ---- a server around a scripted engine, for replies the demo model cannot be made to write ---------


class ReplyEngine(ScriptedEngine):
    """Answers each prompt with REPLIES[prompt] (default: the prompt itself), a few characters per token."""

    def __init__(self, replies: dict[str, str]) -> None:
        super().__init__(context_tokens=4096)
        self.replies = replies

    def submit(self, request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        prompt = request.messages[-1].text
        text = self.replies.get(prompt, prompt)
        pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
        result = GenerationResult("stop", text, tuple(range(len(pieces))), self.count(request.messages), 1.0, 2.0, 100.0)
        loop = asyncio.get_running_loop()
        for piece in pieces:
            loop.call_soon(sink.on_token, piece)
        loop.call_soon(sink.on_done, result)
        return request.handle


@contextlib.contextmanager
def serving(settings: Settings, engine: Any = None, factory: Any = None) -> Iterator[Site]:
    """The app around this engine (or engine factory) on a real uvicorn, on a free loopback port."""
    with serve_app(create_app(settings, engine=engine, engine_factory=factory)) as url:
        yield Site(url)


# ---- the chat, on the demo model ----------------------------------------------------------------------


def test_reply_streams_token_by_token_then_shows_usage(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Settings go out with `configure`; Enter sends (Shift+Enter is a newline); deltas render while
    streaming; `done` shows usage and timing."""
    chat = open_chat(server)
    chat.apply_settings(system="Answer briefly.", temperature="0", max_tokens="300")
    session = chat.connection(server).session
    assert (session.system, session.defaults.temperature, session.defaults.max_tokens) == ("Answer briefly.", 0, 300)
    chat.page.evaluate(RECORD_STREAMING)
    chat.page.fill("#prompt", "Write")
    chat.page.press("#prompt", "Shift+Enter")
    chat.page.type("#prompt", "a long poem")  # greedy, the demo model writes all 300 tokens of it
    assert chat.page.locator(".message").count() == 0
    chat.page.press("#prompt", "Enter")
    chat.wait_done()

    expect(chat.page.locator(".message.user .text")).to_have_text("Write\na long poem")
    reply = chat.last_reply()
    meta = reply.locator(".meta")
    done = next(f for f in chat.received if f["type"] == "done")
    assert done["usage"]["completion_tokens"] <= 300
    expect(meta).to_contain_text(f"{done['usage']['completion_tokens']} tokens (prompt {done['usage']['prompt_tokens']}")
    expect(meta).to_contain_text("first token")
    expect(meta).to_contain_text("tokens/s")
    assert reply.get_attribute("aria-busy") is None
    token_frames = [f for f in chat.received if f["type"] == "token"]
    assert len(token_frames) > 1
    streamed = "".join(f["text"] for f in token_frames)
    assert words(reply.locator(".text").text_content() or "") == words(streamed)
    partial_lengths = set(chat.page.evaluate("window.streamedLengths"))
    assert len(partial_lengths) > 1, "the reply did not grow on screen while streaming"


def send_and_wait(chat: Chat, text: str) -> None:
    """Send `text` and wait for its reply to finish (one more finished reply on the page)."""
    finished = chat.page.locator(".message.assistant[data-finish-reason]")
    before = finished.count()
    chat.send(text)
    expect(finished).to_have_count(before + 1, timeout=60_000)


def words(text: str) -> list[str]:
    """The words of a text, which markdown rendering keeps in order (it may drop punctuation and spaces)."""
    return re.findall(r"[A-Za-z]+", text)


# Records the reply's length at every DOM change while it is still marked busy (streaming).
RECORD_STREAMING = """() => {
  window.streamedLengths = [];
  new MutationObserver(() => {
    const reply = [...document.querySelectorAll(".message.assistant")].pop();
    const length = reply?.querySelector(".text").textContent.length;
    if (reply?.getAttribute("aria-busy") === "true" && length > 0) window.streamedLengths.push(length);
  }).observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
}"""


def test_demo_replies_are_words_under_a_badge_that_says_they_are_random(
    server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    """The welcome shows what to do until the first message; the demo model's reply is English words
    (never U+FFFD), under a badge and a welcome note saying the model is random."""
    chat = open_chat(server)
    expect(chat.page.locator("#demo-badge")).to_have_text("Demo model — replies are random")
    welcome = chat.page.locator("#welcome")
    for action in ("Type", "Attach images", "paste or drop", "Stop", "Settings", "New chat"):
        expect(welcome).to_contain_text(action)
    expect(chat.page.locator("#welcome-demo")).to_be_visible()
    save_screenshot(chat.page, "web-welcome.png")
    chat.send("Hello there, what do you see?")
    chat.wait_done()

    expect(welcome).to_be_hidden()
    done = next(f for f in chat.received if f["type"] == "done")
    assert "\ufffd" not in done["text"] and done["text"].strip()
    # (the demo vocabulary also holds the characters JSON and tool calls are spelled with, for constrained decoding)
    assert all(re.fullmatch(r"[A-Za-z0-9]+", word) for word in re.split(r"[\s.,!?:;'\"()\-{}\[\]_<>/]+", done["text"]) if word)
    save_screenshot(chat.page, "web-demo-reply.png")


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


def test_unreadable_files_are_refused_by_name_not_shown_broken(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """A file the browser cannot decode, or one that is not an image, is named and never attached."""
    chat = open_chat(server)
    chat.page.set_input_files("#file-input", files=[image_file("broken.png", b"not a png")])
    expect(chat.page.locator("#composer-note")).to_have_text("broken.png could not be read as an image; it may be damaged.")
    chat.page.evaluate(DISPATCH_WITH_FILE.replace('"image/png"', '"application/pdf"'), ["drop", "notes.pdf", [37, 80]])
    expect(chat.page.locator("#composer-note")).to_have_text("notes.pdf is not a PNG, JPEG, WebP or GIF image.")
    expect(chat.page.locator("#attachments li")).to_have_count(0)


def test_stop_cancels_the_running_reply(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Stop sends `cancel` for the running turn; the reply is marked cancelled and kept as partial."""
    chat = open_chat(server)
    chat.apply_settings(**LONG_REPLY)
    chat.send(LONG_PROMPT)
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
    assert done["usage"]["completion_tokens"] < 1500
    assert chat.connection(server).session.exchanges[-1].partial


def bmp_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 120, 40)).save(buffer, "BMP")
    return buffer.getvalue()


def test_a_refused_message_returns_to_the_composer_and_names_the_file(
    server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    """A turn the server refuses (a BMP named .png: the browser reads it, the server does not) shows the
    error with the file's name, and its text and image go back to the composer; the page sends again."""
    chat = open_chat(server)
    chat.page.set_input_files("#file-input", files=[image_file("holiday.png", bmp_bytes())])
    chat.send("Look at this")

    error = chat.page.locator(".message.error")
    expect(error).to_contain_text('bad_image: "holiday.png": format BMP is not one of JPEG, PNG, WebP, GIF')
    expect(error).to_contain_text("your message is back in the message box")
    frame = next(f for f in chat.received if f["type"] == "error")
    assert frame["code"] == "bad_image" and "image 0" in frame["message"]
    expect(chat.page.locator("#prompt")).to_have_value("Look at this")
    expect(chat.page.locator("#attachments img")).to_have_attribute("alt", "holiday.png")
    expect(chat.page.locator(".message.user")).to_have_count(0)
    expect(chat.page.locator(".message.assistant")).to_have_count(0)
    save_screenshot(chat.page, "web-refused.png")

    chat.page.click("#attachments .remove")
    chat.page.press("#prompt", "Enter")
    chat.wait_done()
    expect(chat.page.locator(".message.user .text")).to_have_text("Look at this")


def test_max_tokens_is_bounded_by_the_context_window(demo_dirs: DemoDirs, open_chat: Callable[..., Chat]) -> None:
    """Max tokens cannot be set past what leaves room in the context window; a saved value too large
    for this server is lowered on connect, and a message too long for the window comes back."""
    running = start_server(demo_dirs.model, Settings(context_tokens=200))
    try:
        chat = open_chat(running)
        chat.open_settings()
        field_ = chat.page.locator("#max_tokens")
        expect(field_).to_have_attribute("max", "150")
        expect(chat.page.locator("#max-tokens-hint")).to_contain_text("1 to 150")
        field_.fill("5000")
        chat.page.click("#settings-apply")
        state = chat.page.locator("#settings-state")
        expect(state).to_have_text("Not applied. Max tokens: Value must be less than or equal to 150.")
        assert not any(_unpack(f)["type"] == "configure" for f in chat.sent)
        save_screenshot(chat.page, "web-settings-bounded.png")

        chat.page.evaluate("localStorage.setItem('gateway.settings', JSON.stringify({max_tokens: 5000}))")
        chat.page.reload()
        chat.wait_connected()
        expect(chat.page.locator(".notice").first).to_have_text(
            "Max tokens was lowered to 150 to fit this model's context window."
        )
        assert json.loads(chat.page.evaluate("localStorage.getItem('gateway.settings')"))["max_tokens"] == 150

        chat.send("word " * 120)
        expect(chat.page.locator(".message.error")).to_contain_text("context_overflow")
        expect(chat.page.locator("#prompt")).to_have_value("word " * 120)
    finally:
        running.stop()


def test_phone_width_has_a_compact_header_no_sideways_scroll_and_labelled_controls(
    server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    """At 390 px the header stays under 100 px, nothing overflows sideways, every control has a name."""
    chat = open_chat(server, viewport=PHONE)
    header = chat.page.locator("header").bounding_box()
    assert header is not None and header["height"] < 100, header
    save_screenshot(chat.page, "web-phone-welcome.png")
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
