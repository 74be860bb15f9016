"""`gateway serve --log-format json`: a real server's every log line is one JSON object with fields, never text or secrets."""

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
from typing import Any

import pytest
import requests

from gateway.client import GatewayClient
from gateway.logs import JsonFormatter, session_hash
from tests.conftest import DemoDirs, logged_serve

KEY = "sk-json-logs-0123456789abcdef"
PROMPT = "zebra quokka narwhal"  # words no log line has any reason to hold


@pytest.fixture
def json_server(demo_dirs: DemoDirs, tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """`python -m gateway.cli serve --log-format json --log-level debug` with an API key; its stderr in a file."""
    with logged_serve(demo_dirs.model, tmp_path, "--api-key", KEY, "--log-format", "json", "--log-level", "debug") as served:
        yield served


async def session(url: str) -> tuple[str, str]:
    """A turn, a refused frame (an `error` with a code) and an HTTP completion; the session id and resume token."""
    async with GatewayClient(url.replace("http", "ws") + "/ws", additional_headers={"Authorization": f"Bearer {KEY}"}) as client:
        assert (await client.turn("t1", PROMPT, max_tokens=3)).done is not None
        refused = await client.request({"type": "configure", "id": "c1", "options": {"max_tokens": 10**9}})
        assert refused["type"] == "error" and refused["code"] == "invalid_field"
        ids = client.ready["session"], client.ready["resume_token"]
    body = {"model": "gateway-demo", "max_tokens": 2, "messages": [{"role": "user", "content": PROMPT}]}
    response = requests.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code == 200
    return ids


def entries(log_path: Path) -> list[dict[str, Any]]:
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # fails on any line that is not one JSON object


def test_every_line_is_json_with_fields_and_no_text_or_secret(json_server: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    """Start-up, uvicorn's access and error lines, session lines and the turn's line are each one JSON object
    with ts, level, logger and message; the session appears hashed; the key, the resume token, the session id
    and the prompt's text appear nowhere."""
    url, log_path, process = json_server
    session_id, token = asyncio.run(session(url))
    time.sleep(0.5)  # the server's last lines
    process.terminate()
    process.wait(30)
    log, lines = log_path.read_text(), entries(log_path)
    assert all({"ts", "level", "logger", "message"} <= line.keys() and line["ts"].endswith("+00:00") for line in lines)
    for secret in (KEY, token, session_id, "zebra", "quokka"):
        assert secret not in log
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert {"method": "POST", "path": "/v1/chat/completions", "status": 200}.items() <= access[-1].items()
    assert any(line["logger"] == "uvicorn.error" for line in lines)
    ours = [line for line in lines if line.get("session") == session_hash(session_id)]
    turn = next(line for line in ours if line["message"].startswith("turn ended"))
    assert turn["completion_tokens"] == 3 and turn["prompt_tokens"] > 0 and turn["finish_reason"] == "length"
    assert any(line.get("code") == "invalid_field" for line in ours)


def test_fields_outside_the_allowlist_never_reach_the_line() -> None:
    """A record's `extra` reaches the JSON only for allowlisted fields, so no caller leaks text through one."""
    record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "session abc: hi %s", ("there",), None)
    record.code, record.text = "busy", "the user's words"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "hi there" and entry["session"] == session_hash("abc") and entry["code"] == "busy"
    assert "text" not in entry and "the user's words" not in json.dumps(entry)


def test_an_unknown_log_format_is_one_line() -> None:
    """GATEWAY_LOG_FORMAT other than text or json stops `serve` at once with one line."""
    env = dict(os.environ, GATEWAY_LOG_FORMAT="yaml", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0 and done.stderr.strip().splitlines() == [
        "gateway serve: GATEWAY_LOG_FORMAT is one of text, json, not 'yaml'"
    ]
