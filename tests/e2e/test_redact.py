"""Secrets never logged, on a real `gateway serve --log-level debug`: uvicorn's and websockets' own debug
lines of a whole session hold no key and no resume token."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.client import GatewayClient
from tests.conftest import DemoDirs, logged_serve

KEY = "sk-gw-0123456789abcdefSECRET"

# ---- a real `gateway serve --log-level debug` through a whole session ---------------------------------


@pytest.fixture
def debug_server(demo_dirs: DemoDirs, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`python -m gateway.cli serve` with an API key at --log-level debug; yields its URL and its log file."""
    with logged_serve(demo_dirs.model, tmp_path, "--api-key", KEY, "--log-level", "debug") as (url, log_path, _):
        yield url, log_path


async def whole_session(url: str) -> list[str]:
    """Key as header and as subprotocol, msgpack and JSON, a turn, resume, forget; every resume token seen."""
    ws_url = url.replace("http", "ws") + "/ws"
    header = {"additional_headers": {"Authorization": f"Bearer {KEY}"}}
    async with GatewayClient(ws_url, **header) as client:
        tokens, session = [client.ready["resume_token"]], client.ready["session"]
        assert (await client.turn("t1", "hello", max_tokens=3)).done is not None
    async with GatewayClient(ws_url, subprotocols=["gateway.json", f"bearer.{KEY}"]) as client:
        tokens.append(client.ready["resume_token"])
        await client.ws.send(json.dumps({"type": "resume", "session": session, "token": tokens[0], "id": "r"}))
        await client.ws.send(json.dumps({"type": "forget", "id": "f"}))
        frame = {"type": ""}
        while frame["type"] != "forgotten":  # read raw: the client would skip the fresh session's low seq
            frame = json.loads(await asyncio.wait_for(client.ws.recv(), 30))
            assert frame["type"] != "error", frame
        tokens.append(frame["resume_token"])
    body = {"model": "gateway-demo", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    response = requests.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code == 200
    return tokens


def test_debug_log_of_a_whole_session_holds_no_secret(debug_server: tuple[str, Path]) -> None:
    """The whole debug log of a session (handshakes, frames, turns, resume, forget, /v1) never holds the
    key or any resume token; it shows where they were."""
    url, log_path = debug_server
    tokens = asyncio.run(whole_session(url))
    time.sleep(0.5)  # the server's last lines
    log = log_path.read_text()
    assert KEY not in log
    for token in tokens:
        assert token not in log and token[:12] not in log and token[-12:] not in log
    assert "authorization: [redacted]" in log.lower() and "bearer.[redacted]" in log  # debug lines were written
    assert "TEXT [redacted]" in log and "BINARY [redacted]" in log
