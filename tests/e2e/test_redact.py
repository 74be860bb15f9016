"""Secrets never logged: the API key, `bearer.` subprotocols, Authorization headers and resume tokens are
redacted at every level, uvicorn's and websockets' own debug lines included."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.app import create_app
from gateway.client import GatewayClient
from gateway.config import Settings
from gateway.redact import REDACTED, Redactor
from tests.conftest import DemoDirs, free_port

KEY = "sk-gw-0123456789abcdefSECRET"

LINES = [
    ("< authorization: Bearer sk-other", "< authorization: [redacted]"),
    ("< Proxy-Authorization: Basic dXNlcjpwYXNz", "< Proxy-Authorization: [redacted]"),
    ("< sec-websocket-protocol: gateway.json, bearer.sk-other", "< sec-websocket-protocol: gateway.json, bearer.[redacted]"),
    ("calling with Bearer sk-other now", "calling with Bearer [redacted] now"),
    ('< TEXT \'{"type": "resume", "session": "s1", "token": "kq3V0m8t"}\' [58 bytes]', "< TEXT [redacted] [58 bytes]"),
    ("> BINARY 8c a4 74 79 70 65 ... 73 65 71 01 [904 bytes]", "> BINARY [redacted] [904 bytes]"),
    ('{"resume_token": "kq3V0m8t", "seq": 1}', '{"resume_token": "[redacted]", "seq": 1}'),
    ("GET /ws?token=kq3V0m8t&x=1", "GET /ws?token=[redacted]&x=1"),
    ("store at redis://:hunter2@127.0.0.1:6379/0", "store at redis://[redacted]127.0.0.1:6379/0"),
    ("prompt_tokens=12 max_tokens: 5", "prompt_tokens=12 max_tokens: 5"),
]


@pytest.mark.parametrize(("line", "expected"), LINES)
def test_credential_shapes_are_redacted(line: str, expected: str) -> None:
    """Each shape a credential travels in is hidden, what says where it was stays; other text is untouched."""
    assert Redactor().redact(line) == expected


def test_a_known_secret_is_redacted_wherever_it_appears() -> None:
    """The configured key is hidden in any text, not only in the shapes above."""
    assert Redactor([KEY, None]).redact(f"x{KEY}y") == f"x{REDACTED}y"


def test_arguments_are_redacted_in_place_where_formatters_read_them() -> None:
    """uvicorn's access formatter unpacks a record's arguments: they stay five, with the token hidden."""
    args = ("127.0.0.1:5000", "GET", "/ws?token=kq3V0m8t", "1.1", 101)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)
    Redactor().filter(record)
    assert record.args == ("127.0.0.1:5000", "GET", "/ws?token=[redacted]", "1.1", 101)


def test_create_app_redacts_every_logger(caplog: pytest.LogCaptureFixture) -> None:
    """Once an app is built with a key, any logger's record (and its exception text) hides the key."""
    create_app(Settings(api_key=KEY))
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("some.library").debug("header %s", f"Bearer {KEY}")
        try:
            raise ValueError(f"refused {KEY}")
        except ValueError:
            logging.getLogger("uvicorn.error").exception("failed")
    assert caplog.records and KEY not in caplog.text


# ---- a real `gateway serve --log-level debug` through a whole session ---------------------------------


@pytest.fixture
def debug_server(demo_dirs: DemoDirs, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`python -m gateway.cli serve` with an API key at --log-level debug; yields its URL and its log file."""
    port, log_path = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "gateway.cli", "serve", "--model", str(demo_dirs.model), "--port", str(port)]
    command += ["--api-key", KEY, "--log-level", "debug", "--data-dir", str(tmp_path / "data")]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        yield url, log_path
    finally:
        process.terminate()
        process.wait(30)


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


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
