"""The browser's live view (web/live.js) in Chromium with its fake camera, against the real demo engine: frames
stream into the session's window at the server's rate, a turn sent while live reads them, stop ends the stream,
watch turns render as replies marked as from the watch, and the controls are labelled, keyboard-reachable and pass axe."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e import test_web as web
from tests.e2e.test_web import CHROMIUM, CHROMIUM_ARGS, PHONE, Chat, save_screenshot
from tests.e2e.test_web_a11y import audit

# Chromium's fake camera (a moving test pattern, so frames differ and are not merged), granted without a prompt.
FAKE_MEDIA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
FPS = 4.0
# The camera granted a second after it is asked for, so that a second press comes while the first is pending.
SLOW_CAMERA = """{
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  window.openedStreams = [];
  navigator.mediaDevices.getUserMedia = (constraints) => new Promise((r) => setTimeout(r, 1000))
    .then(() => open(constraints)).then((stream) => (window.openedStreams.push(stream), stream));
}"""
ALL_ENDED = "window.openedStreams.map((s) => s.getTracks().every((t) => t.readyState === 'ended'))"
# A camera whose view never changes: a painted canvas's stream (repainted, as a canvas stream sends a frame per paint).
STILL_CAMERA = """{
  navigator.mediaDevices.getUserMedia = async () => {
    const canvas = Object.assign(document.createElement("canvas"), { width: 160, height: 120 });
    const context = canvas.getContext("2d");
    const paint = () => { context.fillStyle = "#3a7"; context.fillRect(0, 0, 160, 120); };
    paint();
    setInterval(paint, 50);
    return canvas.captureStream(20);
  };
}"""
REFUSE_SCREEN = "navigator.mediaDevices.getDisplayMedia = () => Promise.reject(new DOMException('no', 'NotAllowedError'));"
open_chat = web.open_chat  # it opens pages in the browser below


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """The system's Chromium as tests/e2e/test_web.py launches it, with the fake camera."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing; install it with `apt-get install -y chromium`"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + FAKE_MEDIA, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def live_server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(max_frames_per_second=FPS, min_watch_every_s=0.5))
    yield running
    running.stop()


def sent_frames(chat: Chat, kind: str) -> list[dict[str, Any]]:
    """The page's client frames of that type, decoded."""
    frames = [msgpack.unpackb(data, raw=False) for data in chat.sent if isinstance(data, bytes)]
    return [frame for frame in frames if frame.get("type") == kind]


def window_of(server: RunningServer, chat: Chat, source: str = "camera") -> Any:
    live = server.app.state.ws.hub.live[chat.session_id()]
    return live.windows.get(source) if live.windows is not None else None


def until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Wait for something the server side holds (as `expect` waits for the page)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def start_camera(chat: Chat, server: RunningServer, frames: int = 2, presses: int = 1) -> Any:
    """Press Camera with the keyboard; wait until the session's window has taken `frames` distinct frames."""
    chat.page.get_by_role("button", name="Camera").focus()
    for _ in range(presses):
        chat.page.keyboard.press("Enter")
    expect(chat.page.locator("#live-indicator")).to_have_text("Live: camera")
    until(lambda: (window := window_of(server, chat)) is not None and window.counters.accepted >= frames, "frames in the window")
    return window_of(server, chat)


def test_the_camera_streams_frames_a_turn_reads_them_and_stop_ends_it(
    live_server: RunningServer, open_chat: Callable[..., Chat]
) -> None:
    """Frames arrive as msgpack `frame`s (JPEG) at the server's rate; a turn sent while live carries `live` and
    its `accepted.live_frames` names the frames read; after Stop no frame is sent and the indicator is gone."""
    chat = open_chat(live_server)
    expect(chat.page.locator("#live-preview")).to_be_hidden()
    window = start_camera(chat, live_server)
    expect(chat.page.locator("#live-preview")).to_be_visible()
    frames = sent_frames(chat, "frame")
    assert frames and {f["source"] for f in frames} == {"camera"} and frames[0]["image"][:2] == b"\xff\xd8"
    assert window.counters.dropped == 0  # sent at the rate the server takes, never past it
    chat.send("what do you see?")
    chat.wait_done()
    turn = sent_frames(chat, "turn")[-1]
    accepted = next(f for f in chat.received if f["type"] == "accepted" and f["id"] == turn["id"])
    assert turn["live"] == {"source": "camera"} and accepted["live_frames"]["count"] >= 2
    expect(chat.page.locator(".message.user .live-note")).to_contain_text("live frame(s)")
    chat.page.get_by_role("button", name="Stop live view").click()
    expect(chat.page.locator("#live-indicator")).to_be_hidden()
    stopped_at = len(sent_frames(chat, "frame"))
    chat.send("and now?")  # a round trip longer than a frame's interval: a frame still sent would show
    chat.wait_done()
    assert len(sent_frames(chat, "frame")) == stopped_at
    assert "live" not in sent_frames(chat, "turn")[-1]


def test_camera_pressed_again_while_it_opens_streams_once(live_server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """A second press while the browser is still opening the camera: the camera granted first is let go, so
    after Stop every camera track the page opened has ended (the camera's light goes off) and no frame is sent."""
    chat = open_chat(live_server, connected=False)
    chat.page.add_init_script(SLOW_CAMERA)
    chat.page.reload()
    chat.wait_connected()
    start_camera(chat, live_server, presses=2)
    chat.page.get_by_role("button", name="Stop live view").click()
    stopped_at = len(sent_frames(chat, "frame"))
    chat.send("anything?")
    chat.wait_done()
    assert len(sent_frames(chat, "frame")) == stopped_at
    assert chat.page.evaluate(ALL_ENDED) == [True, True]


def test_watch_turns_render_as_replies_marked_from_the_watch(live_server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Watch sends `watch` with the interval and question; the server's turns (`initiated: watch`) show as
    replies marked as from the watch; Stop watching sends `unwatch`."""
    chat = open_chat(live_server)
    chat.apply_settings(max_tokens="4")
    start_camera(chat, live_server, frames=1)
    chat.page.fill("#watch-text", "Is anyone there?")
    chat.page.fill("#watch-every", "0.5")
    chat.page.get_by_role("button", name="Watch").click()
    watched = chat.page.locator('.message.assistant[data-initiated="watch"]').first
    expect(watched).to_have_attribute("data-finish-reason", "length", timeout=60_000)
    expect(watched.locator(".watch-label")).to_have_text("From watch: Is anyone there?")
    assert sent_frames(chat, "watch") == [
        {"type": "watch", "id": "live-watch", "source": "camera", "every_s": 0.5, "text": "Is anyone there?"}
    ]
    assert any(f["type"] == "accepted" and f.get("initiated") == "watch" and f["live_frames"] for f in chat.received)
    expect(chat.page.locator("#live-indicator")).to_have_text("Live: camera · watching")
    chat.page.get_by_role("button", name="Stop watching").click()
    expect(chat.page.get_by_role("button", name="Watch")).to_have_attribute("aria-pressed", "false")
    assert [f["type"] for f in sent_frames(chat, "unwatch")] == ["unwatch"]
    chat.page.get_by_role("button", name="Stop live view").click()


def test_a_still_scene_shows_as_still(live_server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """A camera whose view does not change: the server merges its frames, the turn's `accepted.live_frames` says
    `still`, and the page's live indicator and the turn's note show it."""
    chat = open_chat(live_server, connected=False)
    chat.page.add_init_script(STILL_CAMERA)
    chat.page.reload()
    chat.wait_connected()
    chat.apply_settings(max_tokens="4")
    start_camera(chat, live_server, frames=1)
    until(lambda: window_of(live_server, chat).counters.merged >= 1, "a repeated frame merged")
    chat.send("anything new?")
    chat.wait_done()
    accepted = next(f for f in reversed(chat.received) if f["type"] == "accepted")
    assert accepted["live_frames"]["still"] and accepted["live_frames"]["merged"] >= 1
    expect(chat.page.locator("#live-indicator")).to_have_text("Live: camera · still")
    expect(chat.page.locator(".message.user .live-note")).to_contain_text("The scene was still")
    chat.page.get_by_role("button", name="Stop live view").click()
    expect(chat.page.locator("#live-indicator")).to_be_hidden()


def test_the_screen_button_streams_the_screen(live_server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Share screen (getDisplayMedia, granted by the fake UI) streams into a `screen` window, and a turn reads it."""
    chat = open_chat(live_server)
    chat.page.get_by_role("button", name="Share screen").click()
    expect(chat.page.locator("#live-indicator")).to_have_text("Live: screen")
    until(
        lambda: (window := window_of(live_server, chat, "screen")) is not None and window.counters.accepted >= 1, "screen frames"
    )
    chat.send("what is on the screen?")
    chat.wait_done()
    assert sent_frames(chat, "turn")[-1]["live"] == {"source": "screen"}
    assert {f["source"] for f in sent_frames(chat, "frame")} == {"screen"}


def test_a_refused_screen_share_says_why_and_the_page_goes_on(live_server: RunningServer, open_chat: Callable[..., Chat]) -> None:
    """Where the browser refuses (the user cancels the picker), the reason is said, nothing streams, and a turn
    sent then is an ordinary one."""
    chat = open_chat(live_server, connected=False)
    chat.page.add_init_script(REFUSE_SCREEN)
    chat.page.reload()
    chat.wait_connected()
    chat.page.get_by_role("button", name="Share screen").click()
    expect(chat.page.locator("#live-note")).to_have_text(
        "Could not start the screen: permission was denied, or sharing was cancelled."
    )
    expect(chat.page.locator("#live-indicator")).to_be_hidden()
    chat.send("still here?")
    chat.wait_done()
    assert sent_frames(chat, "frame") == [] and "live" not in sent_frames(chat, "turn")[-1]


@pytest.mark.parametrize("layout", ["desktop-light", "phone-dark"])
def test_the_live_controls_pass_axe(live_server: RunningServer, open_chat: Callable[..., Chat], layout: str) -> None:
    """Streaming, with the preview, the indicator and the watch controls shown: no serious axe violation."""
    phone = layout.startswith("phone")
    chat = open_chat(live_server, bypass_csp=True, **({"viewport": PHONE, "color_scheme": "dark"} if phone else {}))
    start_camera(chat, live_server, frames=1)
    expect(chat.page.locator("#watch")).to_be_visible()
    save_screenshot(chat.page, f"web-live-{layout}.png")
    assert audit(chat) == []
    chat.page.get_by_role("button", name="Stop live view").click()
