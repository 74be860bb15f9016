"""`GET /status` on a real uvicorn server: the reasons a browser's handshake would be refused."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websockets
from websockets.exceptions import InvalidStatus

from gateway.app import EngineFactory, create_app
from gateway.config import Settings
from gateway.engine.contract import Engine
from gateway.engine.scripted import ScriptedEngine
from tests.conftest import serve_app


@contextlib.contextmanager
def serving(settings: Settings, engine: Engine | None = None, factory: EngineFactory | None = None) -> Iterator[str]:
    """The app with this engine (or factory) on a free loopback port; yields the base URL."""
    with serve_app(create_app(settings, engine=engine, engine_factory=factory)) as url:
        yield url


def status(url: str, key: str | None = None, **params: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = requests.get(f"{url}/status", params=params, headers=headers, timeout=10)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    return dict(response.json())


async def handshake(url: str, origin: str) -> int:
    try:
        async with websockets.connect(url.replace("http", "ws") + "/ws", origin=origin):  # type: ignore[arg-type]
            return 101
    except InvalidStatus as exc:
        return int(exc.response.status_code)


def test_ready_server_reports_model_and_no_key_needed() -> None:
    """A ready server without a key: state ready, the model id, auth none, no error, not the demo."""
    with serving(Settings(engine="scripted"), ScriptedEngine(model_id="m1")) as url:
        expected = {"state": "ready", "model": "m1", "demo": False, "auth": "none", "origin_allowed": None, "error": None}
        assert status(url) == {**expected, "adapters": [], "durable": True, "token_url": None}


def test_durable_is_false_with_the_memory_store() -> None:
    """With `--session-store memory` sessions do not outlive a restart, and /status says so."""
    with serving(Settings(engine="scripted", session_store="memory"), ScriptedEngine()) as url:
        assert status(url)["durable"] is False


def test_demo_flag_follows_the_settings() -> None:
    """`demo` is true when no model directory is configured and the real engine serves the demo model."""
    with serving(Settings(), ScriptedEngine()) as url:
        assert status(url)["demo"] is True
    with serving(Settings(model="/models/real"), ScriptedEngine()) as url:
        assert status(url)["demo"] is False


def test_key_missing_wrong_and_ok() -> None:
    """With an API key: no header is `missing`, another key `wrong`, the key `ok`."""
    with serving(Settings(engine="scripted", api_key="k-123"), ScriptedEngine()) as url:
        assert status(url)["auth"] == "missing"
        assert status(url, key="nope")["auth"] == "wrong"
        assert status(url, key="k-123")["auth"] == "ok"


@pytest.mark.parametrize(
    ("allowed", "origin", "expected"),
    [("", "self", True), ("", "http://evil.example", False), ("https://chat.example.com", "https://chat.example.com", True)],
)
async def test_origin_verdict_agrees_with_the_handshake(allowed: str, origin: str, expected: bool) -> None:
    """The page's origin, named in the query, gets the verdict the WebSocket handshake gives it."""
    with serving(Settings(engine="scripted", allowed_origins=allowed), ScriptedEngine()) as url:
        origin = url if origin == "self" else origin
        assert status(url, origin=origin)["origin_allowed"] is expected
        assert await handshake(url, origin) == (101 if expected else 403)


def test_loading_then_ready() -> None:
    """While the factory runs the state is `loading`; once it returns, `ready`."""
    release = threading.Event()

    def factory(settings: Settings) -> Engine:
        release.wait(30)
        return ScriptedEngine()

    with serving(Settings(engine="scripted"), factory=factory) as url:
        assert status(url)["state"] == "loading"
        release.set()
        deadline = time.monotonic() + 60
        while status(url)["state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def fail_to_load(settings: Settings) -> Engine:
    raise RuntimeError("no weights in /models/x")


def wait_for_state(url: str, state: str, key: str | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (body := status(url, key=key))["state"] != state:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return body


def test_failed_load_shows_its_cause_only_to_key_holders() -> None:
    """A failed load is `failed` with the error's text; with a key configured, only for the key's holder."""
    with serving(Settings(engine="scripted"), factory=fail_to_load) as url:
        assert wait_for_state(url, "failed")["error"] == "no weights in /models/x"
    with serving(Settings(engine="scripted", api_key="k"), factory=fail_to_load) as url:
        assert wait_for_state(url, "failed")["error"] is None
        assert status(url, key="k")["error"] == "no weights in /models/x"


async def test_full_when_the_client_has_no_connection_left() -> None:
    """At the per-client connection limit the state is `full`."""
    with serving(Settings(engine="scripted", max_connections_per_client=1), ScriptedEngine()) as url:
        async with websockets.connect(url.replace("http", "ws") + "/ws"):
            assert status(url)["state"] == "full"
        deadline = time.monotonic() + 60
        while status(url)["state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.05)
