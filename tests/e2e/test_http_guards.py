"""HTTP details on a real server: JSON-only /v1 bodies, invalid UTF-8, clients that leave mid-body, /metrics and the key."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server

KEY = "sk-guards"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(api_key=KEY))
    yield running
    running.stop()


def chat(running: RunningServer, data: bytes, content_type: str | None) -> requests.Response:
    headers = AUTH | ({"Content-Type": content_type} if content_type else {})
    return requests.post(f"{running.http_url}/v1/chat/completions", data=data, headers=headers, timeout=30)


BODY = b'{"model": "gateway-demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_bodies_that_are_not_declared_json_get_415(keyed: RunningServer, content_type: str | None) -> None:
    """A browser sends these cross-site without a preflight: refused with 415 in OpenAI's error shape."""
    response = chat(keyed, BODY, content_type)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_json_with_a_charset_is_accepted(keyed: RunningServer) -> None:
    """`application/json; charset=utf-8` is JSON."""
    assert chat(keyed, BODY, "application/json; charset=utf-8").status_code == 200


def test_invalid_utf8_is_400(keyed: RunningServer) -> None:
    """Invalid UTF-8 inside a JSON string is a 400 naming the problem, not a 500."""
    response = chat(keyed, BODY.replace(b"hi", b"h\xff\xfei"), "application/json")
    assert response.status_code == 400
    assert "UTF-8" in response.json()["error"]["message"]


def test_client_leaving_mid_body_is_logged_quietly(keyed: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """A client that disconnects before its body arrives is a debug line, not an ERROR with a traceback."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += b"Authorization: Bearer %s\r\nContent-Length: 1000\r\n\r\n" % KEY.encode()
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        with socket.create_connection(("127.0.0.1", keyed.port)) as sock:
            sock.sendall(head + b'{"model": ')
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        while not any("disconnected" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert any(r.levelno == logging.DEBUG and "disconnected" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_metrics_need_the_key_when_one_is_set(keyed: RunningServer) -> None:
    """With an API key, /metrics is 401 without it and 200 with it."""
    assert requests.get(f"{keyed.http_url}/metrics", timeout=5).status_code == 401
    assert requests.get(f"{keyed.http_url}/metrics", headers=AUTH, timeout=5).status_code == 200


def test_metrics_public_opens_them(demo_dirs: DemoDirs) -> None:
    """metrics_public=True serves /metrics without the key (for a scraper that cannot send one)."""
    running = start_server(demo_dirs.model, Settings(api_key=KEY, metrics_public=True))
    try:
        assert requests.get(f"{running.http_url}/metrics", timeout=5).status_code == 200
    finally:
        running.stop()


def test_unknown_model_404_lists_the_served_ids(keyed: RunningServer) -> None:
    """A 404 for an unknown model says which ids this server has."""
    response = chat(keyed, BODY.replace(b"gateway-demo", b"adapter"), "application/json")
    assert response.status_code == 404
    assert "This server has `gateway-demo`." in response.json()["error"]["message"]
