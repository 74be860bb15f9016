"""The README's samples are what the server really says and does: the websocat session, the tools bot."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from gateway.ws import protocol
from tests.conftest import RunningServer, image_bytes
from tests.unit.ws.test_protocol_doc import frame_classes

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def block_after(marker: str, fence: str) -> str:
    """The first ```fence block after `marker` in the README."""
    start = README.index(f"```{fence}\n", README.index(marker)) + len(fence) + 4
    return README[start : README.index("\n```", start)]


def websocat_frames() -> list[dict[str, Any]]:
    """The websocat sample's frames, its `{...}` and `[...]` elisions read as empty."""
    lines = block_after("## A session with websocat", "console").splitlines()[1:]
    texts = [re.sub(r"\{\.\.\.\}", "{}", re.sub(r"\[\.\.\.\]", "[]", line)) for line in lines if line.startswith("{")]
    return [json.loads(text) for text in texts]


def test_websocat_sample_shows_the_protocol_version_the_server_speaks() -> None:
    """The sample's `ready` carries `protocol.PROTOCOL_VERSION`, so the README cannot fall behind it."""
    ready = next(frame for frame in websocat_frames() if frame["type"] == "ready")
    assert ready["protocol"] == protocol.PROTOCOL_VERSION


def test_websocat_sample_frames_are_real_frames() -> None:
    """Each frame the sample sends decodes as a client frame; each it shows coming back names only fields
    its server frame has."""
    servers = frame_classes(protocol.ServerFrame)
    clients = frame_classes(protocol.ClientFrame)
    for frame in websocat_frames():
        if (frame["type"] in clients and frame["type"] not in servers) or frame.keys() == {"type"}:
            msgspec.json.decode(json.dumps(frame), type=clients[frame["type"]])
        else:
            assert set(frame) - {"type"} <= set(servers[frame["type"]].__struct_fields__), frame


def test_tools_bot_example_shows_a_whole_tool_call_loop(server: RunningServer, tmp_path: Path) -> None:
    """The README's tools bot, run as written against the demo model: a tool call, its result sent
    back, and the reply after it."""
    code = block_after("A bot with one tool", "python").replace("ws://127.0.0.1:8000/ws", server.ws_url)
    script = tmp_path / "bot.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith('tool call: get_weather({"city": ') and '-> {"city": ' in lines[0], lines
    assert any(line.startswith("reply: ") for line in lines[1:]), lines  # the random reply may hold line breaks


def test_camera_bot_example_streams_a_folder_and_asks_about_it(server: RunningServer, tmp_path: Path) -> None:
    """The README's camera bot, run as written on a folder of three images: it sends them all and its live
    turn reads the distinct ones."""
    folder = tmp_path / "camera"
    folder.mkdir()
    for n, color in enumerate([(200, 0, 0), (200, 0, 0), (0, 0, 200)]):
        (folder / f"{n:03}.jpg").write_bytes(image_bytes("JPEG", color=color))
    code = block_after("### A camera bot", "python").replace("ws://127.0.0.1:8000/ws", server.ws_url)
    script = tmp_path / "camera.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("sent 3 frames; the turn read {'count': 2, "), lines
    assert any(line.startswith("reply: ") for line in lines[1:]), lines  # the random reply may hold line breaks


def test_editing_example_regenerates_switches_and_truncates(server: RunningServer, tmp_path: Path) -> None:
    """The README's editing example, run as written against the demo model: a regenerate from held KV,
    a switch back to `1/2`, a truncate to three characters."""
    code = block_after("### Editing the conversation", "python").replace("ws://127.0.0.1:8000/ws", server.ws_url)
    script = tmp_path / "edit.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("regenerated: ") and "prompt tokens held" in lines[0], lines
    assert lines[1].startswith("back to 1/2: "), lines
    assert lines[2].startswith("truncated: ") and len(ast.literal_eval(lines[2].removeprefix("truncated: "))) == 3, lines
