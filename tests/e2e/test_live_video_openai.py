"""End to end: `video_url` content parts on /v1/chat/completions, as data URIs and as URLs fetched behind the SSRF guard."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import requests

from gateway.core.url_guard import FetchPolicy
from gateway.engine.contract import GenerationRequest
from tests.conftest import RunningServer, record_submissions
from tests.e2e.test_live_video import mp4
from tests.unit.core.test_fetch import LOOPBACK, LoopbackServer, send

CLIP = mp4()
MARKERS = "[video 1, 0.0 s] [video 1, 0.5 s] [video 1, 1.0 s] [video 1, 1.5 s]"


def serve_clip(handler: BaseHTTPRequestHandler) -> None:
    send(handler, CLIP, "video/mp4")


@pytest.fixture(scope="module")
def videos_host() -> Iterator[LoopbackServer]:
    host = LoopbackServer({"/clip.mp4": serve_clip, "/page": lambda h: send(h, b"<html></html>", "text/html")})
    yield host
    host.close()


@pytest.fixture
def submitted(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> list[GenerationRequest]:
    """Every request the engine is handed during the test."""
    return record_submissions(server, monkeypatch)


def ask(server: RunningServer, url: str) -> requests.Response:
    parts: list[dict[str, Any]] = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "what happens?"}]
    body = {"model": "gateway-demo", "messages": [{"role": "user", "content": parts}], "max_tokens": 4, "temperature": 0}
    return requests.post(f"{server.http_url}/v1/chat/completions", json=body, timeout=60)


def test_a_video_data_uri_reaches_the_model_as_timestamped_frames(
    server: RunningServer, submitted: list[GenerationRequest]
) -> None:
    """A data: URI video is four frames (2 s at video_fps 2), each an image, named in the message's text."""
    answer = ask(server, "data:video/mp4;base64," + base64.b64encode(CLIP).decode())
    assert answer.status_code == 200, answer.text
    message = submitted[0].messages[-1]
    assert message.text == f"{MARKERS}\nwhat happens?" and [i.format for i in message.images] == ["jpeg"] * 4


def test_a_video_url_is_fetched_behind_the_ssrf_guard(
    server: RunningServer, submitted: list[GenerationRequest], videos_host: LoopbackServer
) -> None:
    """A loopback URL is refused under the server's policy, fetched once allowed; a page is no video."""
    turns = server.app.state.runtime.turns
    refused = ask(server, videos_host.url("/clip.mp4"))
    turns.attachments.fetch_policy = LOOPBACK
    try:
        fetched = ask(server, videos_host.url("/clip.mp4"))
        page = ask(server, videos_host.url("/page"))
    finally:
        turns.attachments.fetch_policy = FetchPolicy.from_settings(server.settings)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages[0].content"
    assert fetched.status_code == 200, fetched.text
    assert submitted[-1].messages[-1].text.startswith(MARKERS) and len(submitted) == 1
    assert page.status_code == 400 and page.json()["error"]["code"] == "bad_video"


def test_a_corrupt_video_is_bad_video_naming_its_message(server: RunningServer) -> None:
    """A data: URI that holds no video is a 400 `bad_video` whose param is the message's content."""
    answer = ask(server, "data:video/mp4;base64," + base64.b64encode(b"no video here").decode())
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["code"] == "bad_video" and error["param"] == "messages[0].content"
