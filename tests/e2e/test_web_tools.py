"""Tool calls in the browser client: a forced call on the demo model shows inside the reply (name,
arguments as pretty JSON, the call id), and after a reload the history shows it again with its result
under it, as text, never HTML."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from tests.conftest import RunningServer
from tests.e2e import test_web as web
from tests.e2e.test_web import Chat, save_screenshot
from tests.e2e.test_web_a11y import audit

browser = web.browser
open_chat = web.open_chat

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}}]
FORCED = {"type": "function", "function": {"name": "get_weather"}}
RESULT = '{"temperature": 21, "note": "<img src=x onerror=\\"window.pwned = 1\\"><b>hot</b>"}'

# The page has no UI for tools: the test keeps its sockets, to send frames through the page's own.
KEEP_SOCKETS = """(() => {
  const Native = window.WebSocket;
  window.testSockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.testSockets.push(this); }
  };
})();"""
SEND = "(frame) => window.testSockets.at(-1).send(MessagePack.encode(frame))"


def send_frame(chat: Chat, frame: dict[str, Any]) -> None:
    chat.page.evaluate(SEND, frame)


def wait_frame(chat: Chat, kind: str, frame_id: str, timeout_s: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [f for f in chat.received if f["type"] == kind and f.get("id") == frame_id]
        if found:
            return found[-1]
        chat.page.wait_for_timeout(50)
    raise AssertionError(f"no {kind} {frame_id} in {[f['type'] for f in chat.received]}")


def pretty(arguments: str) -> str:
    return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)


def test_forced_tool_call_shows_in_the_reply_and_again_from_history(
    server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    chat = open_chat(server, bypass_csp=True)
    chat.page.context.add_init_script(KEEP_SOCKETS)
    chat.page.reload()  # the same session, now on a socket the test can send through
    chat.wait_connected()
    options = {"tools": TOOLS, "tool_choice": FORCED, "max_tokens": 120, "temperature": 1.0, "seed": 3}
    send_frame(chat, {"type": "configure", "id": "tools-1", **options})
    assert wait_frame(chat, "configured", "tools-1")

    chat.send("What is the weather in Paris?")
    chat.wait_done()
    call = next(f for f in chat.received if f["type"] == "tool_call")
    done = next(f for f in chat.received if f["type"] == "done")
    assert done["finish_reason"] == "tool_calls" and call["name"] == "get_weather"
    reply = chat.last_reply()
    expect(reply).to_have_attribute("data-finish-reason", "tool_calls")
    expect(reply.locator(".meta")).to_contain_text("called tools")
    shown = reply.locator(".tool-call")
    expect(shown).to_have_count(1)
    expect(shown.locator(".tool-name")).to_have_text("get_weather")
    expect(shown.locator(".tool-call-id")).to_have_text(call["call_id"])
    expect(shown.locator(".tool-args")).to_have_text(pretty(call["arguments"]))
    assert json.loads(shown.locator(".tool-args").text_content() or "") == json.loads(call["arguments"])
    assert audit(chat) == []

    # The result joins the history; a reload shows the call from there, with the result under it.
    send_frame(chat, {"type": "tool_result", "call_id": call["call_id"], "content": RESULT})
    chat.page.wait_for_timeout(300)
    assert not [f for f in chat.received if f["type"] == "error"]
    chat.page.reload()
    chat.wait_connected()
    reply = chat.last_reply()
    expect(reply).to_have_attribute("data-finish-reason", "tool_calls")
    shown = reply.locator(".tool-call")
    expect(shown).to_have_count(1)
    expect(shown.locator(".tool-name")).to_have_text("get_weather")
    expect(shown.locator(".tool-call-id")).to_have_text(call["call_id"])
    expect(shown.locator(".tool-args")).to_have_text(pretty(call["arguments"]))
    expect(shown.locator(".tool-result .tool-result-text")).to_have_text(pretty(RESULT))
    expect(shown.locator(".tool-result")).to_contain_text("<b>hot</b>")
    assert shown.locator("b, img").count() == 0
    assert chat.page.evaluate("window.pwned") is None
    expect(chat.page.locator(".message.assistant")).to_have_count(1)  # the tool entry is no message of its own
    expect(chat.page.locator(".message.user")).to_have_count(1)
    assert audit(chat) == []
    save_screenshot(chat.page, "web-tool-call.png")
