"""What a reply shows around it stays right: its meta line in view at phone width, back after a reload, and
an error shown once; real Chromium against a real server on the demo model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from playwright.sync_api import expect

from gateway.config import Settings
from gateway.engine.contract import GenerationRequest, GenerationResult, TurnHandle, TurnSink
from tests.conftest import RunningServer
from tests.e2e import test_web as web
from tests.e2e.test_web import PHONE, Chat, bmp_bytes, image_file, save_screenshot, send_and_wait
from tests.e2e.test_web_edit import control
from tests.e2e.test_web_edit_messages import unknown_regenerated_item

browser = web.browser
open_chat = web.open_chat


def test_at_390_px_the_last_replys_meta_line_is_in_view(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """At phone width, once replies fill the screen, the last reply's meta line (which wraps under its
    copy button there) is inside the conversation's view, above the composer, not scrolled past."""
    chat = open_chat(server, viewport=PHONE)
    chat.apply_settings(temperature="0", max_tokens="120")
    chat.page.click("#settings-toggle")
    for i in range(3):
        send_and_wait(chat, f"Tell me a story, part {i}")
    main = chat.page.locator("main")
    assert main.evaluate("m => m.scrollHeight > m.clientHeight"), "the replies should overflow the screen"
    meta = chat.last_reply().locator(".meta")
    expect(meta).to_contain_text("tokens")
    line, view, composer = meta.bounding_box(), main.bounding_box(), chat.page.locator("#composer").bounding_box()
    assert line is not None and view is not None and composer is not None
    assert line["y"] + line["height"] <= view["y"] + view["height"] <= composer["y"] + 1
    save_screenshot(chat.page, "web-phone-last-meta.png")


def test_a_reload_brings_back_each_replys_meta_line(server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Each finished reply's meta line (how it ended, tokens, timings) is shown again after a reload,
    though the server's history holds the replies' text only."""
    chat = open_chat(server)
    chat.apply_settings(max_tokens="8")
    for text in ("Hello", "And again"):
        send_and_wait(chat, text)
    metas = chat.page.locator(".message.assistant .meta").all_text_contents()
    assert len(metas) == 2 and all(" tokens (prompt " in meta for meta in metas), metas

    chat.page.reload()
    chat.wait_connected()
    expect(chat.page.locator(".message.assistant")).to_have_count(2)
    expect(chat.page.locator(".message.assistant .meta")).to_have_text(metas)
    save_screenshot(chat.page, "web-reload-meta.png")


class FailingEngine(web.ReplyEngine):
    """Replies as ReplyEngine does, except that a turn asking "fail" streams a word, then waits for
    `fail()` to end it with an error (so the page can be reloaded while it runs)."""

    def __init__(self) -> None:
        super().__init__({})
        self.held: tuple[asyncio.AbstractEventLoop, TurnSink, GenerationResult] | None = None

    def submit(self, request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        if request.messages[-1].text != "fail":
            return super().submit(request, sink)
        failed = GenerationResult("error", "half", (0,), self.count(request.messages), 1.0, 2.0, 100.0, error="it broke")
        loop = asyncio.get_running_loop()
        loop.call_soon(sink.on_token, "half")
        self.held = (loop, sink, failed)
        return request.handle

    def fail(self) -> None:
        assert self.held is not None
        loop, sink, failed = self.held
        loop.call_soon_threadsafe(sink.on_done, failed)


def test_a_replayed_error_is_shown_once_after_a_reload(open_chat: Callable[..., Chat]) -> None:
    """A page reloaded while its turn runs is replayed that turn's frames; when the turn then fails, its
    error (which comes before its done) is shown once, beside the reply's "failed" meta line."""
    engine = FailingEngine()
    with web.serving(Settings(engine="scripted"), engine) as site:
        chat = open_chat(site)
        chat.send("hello")
        chat.wait_done()
        chat.send("fail")
        replies = chat.page.locator(".message.assistant")
        expect(replies).to_have_count(2)
        chat.page.reload()
        chat.wait_connected()
        expect(replies.last).to_contain_text("half")  # the running turn, replayed
        engine.fail()
        expect(chat.page.locator(".message.assistant[data-finish-reason]")).to_have_count(2, timeout=15_000)
        expect(replies.last.locator(".meta")).to_contain_text("failed")
        errors = chat.page.locator(".message.error")
        expect(errors).to_have_count(1)
        expect(errors).to_contain_text("it broke")
        save_screenshot(chat.page, "web-reload-error-once.png")


def test_a_failed_turn_is_shown_where_it_was_after_a_reload(open_chat: Callable[..., Chat]) -> None:
    """A turn that ended in an error is in no history (the model never saw it): after a reload the page
    shows its message and its error again, once, between the exchanges it came between."""
    engine = FailingEngine()
    with web.serving(Settings(engine="scripted"), engine) as site:
        chat = open_chat(site)
        send_and_wait(chat, "hello")
        chat.send("fail")
        expect(chat.last_reply()).to_contain_text("half")
        engine.fail()
        expect(chat.last_reply().locator(".meta")).to_contain_text("failed")
        send_and_wait(chat, "after")

        chat.page.reload()
        chat.wait_connected()
        expect(chat.page.locator(".message.assistant")).to_have_count(2)
        shown = chat.page.locator("#messages > li").evaluate_all(SHOWN)
        assert shown == [
            ["message user", "hello"],
            ["message assistant", "hello"],
            ["message user", "fail"],
            ["message error", "generation: it broke"],
            ["message user", "after"],
            ["message assistant", "after"],
        ], shown
        save_screenshot(chat.page, "web-reload-failed-turn.png")


def test_a_refused_turns_error_is_shown_where_it_was_after_a_reload(
    server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    """A turn refused before `accepted` (an unreadable image) is in no history either: after a reload its
    error is shown again where it was, saying that the message was not sent."""
    chat = open_chat(server)
    chat.apply_settings(max_tokens="4")
    chat.page.set_input_files("#file-input", files=[image_file("holiday.png", bmp_bytes())])
    chat.send("Look at this")
    expect(chat.page.locator(".message.error")).to_contain_text("bad_image")
    chat.page.click("#attachments .remove")
    chat.page.fill("#prompt", "")
    send_and_wait(chat, "Hello")

    chat.page.reload()
    chat.wait_connected()
    expect(chat.page.locator(".message.assistant")).to_have_count(1)
    shown = chat.page.locator("#messages > li").evaluate_all(SHOWN)
    assert [classes for classes, _ in shown] == ["message error", "message user", "message assistant"], shown
    assert shown[0][1].startswith('bad_image: "holiday.png"') and shown[0][1].endswith("Not sent to the model."), shown


def test_a_refused_regenerates_error_is_shown_where_it_was_after_a_reload(
    server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    """A regenerate refused before `accepted` (`not_found`) is in no history either: its error is shown once
    after the reply it would have replaced, and again there after a reload, saying it was not sent."""
    chat = open_chat(server, connected=False)
    chat.page.context.route_web_socket("**/ws", unknown_regenerated_item)
    chat.page.reload()
    chat.wait_connected()
    chat.apply_settings(max_tokens="4")
    send_and_wait(chat, "Hello")
    control(chat.last_reply(), "Regenerate reply").click()
    errors = chat.page.locator(".message.error")
    expect(errors).to_contain_text("Not sent to the model.")  # the history is back, with the error in its place
    expect(errors).to_have_count(1)
    send_and_wait(chat, "Again")
    before = chat.page.locator("#messages > li").evaluate_all(SHOWN)

    chat.page.reload()
    chat.wait_connected()
    expect(chat.page.locator(".message.assistant")).to_have_count(2)
    shown = chat.page.locator("#messages > li").evaluate_all(SHOWN)
    assert shown == before, (before, shown)
    assert [classes for classes, _ in shown] == [
        "message user",
        "message assistant",
        "message error",
        "message user",
        "message assistant",
    ], shown
    assert shown[2][1].startswith("not_found") and shown[2][1].endswith("Not sent to the model."), shown
    save_screenshot(chat.page, "web-reload-refused-regenerate.png")


# Each item of the conversation: its classes, and its message's text (an error's whole line).
SHOWN = "items => items.map((li) => [li.className, (li.querySelector(':scope > .text') ?? li).textContent.trim()])"
