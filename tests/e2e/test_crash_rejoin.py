"""kill -9 while a regenerate or an edit runs, restart on the same data directory, resume: the running turn
rejoins the conversation where it belongs, partial, and the branch it was replacing stays beside it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DemoDirs, free_port
from tests.e2e.test_sessions import GREEDY, Raw, serve_process, wait_ready

LONG = {"max_tokens": 2000, "ignore_eos": True}  # still running when the process is killed


def path_of(history: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(t["role"], t["text"], t["partial"]) for t in history["turns"]]


@pytest.mark.parametrize("kind", ["regenerate", "edit"])
async def test_a_turn_running_at_a_crash_rejoins_where_it_belongs(demo_dirs: DemoDirs, tmp_path: Path, kind: str) -> None:
    """A regenerate of the second reply rejoins as that reply's sibling; an edit of the second message rejoins
    as that message's new version, answered by a partial reply. Neither lands after the old second reply."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    process = serve_process(demo_dirs.model, tmp_path, port)
    try:
        await wait_ready(url, process)
        client = await Raw(url).open()
        session, token = client.ready["session"], client.ready["resume_token"]
        accepted, done = [], []
        for turn_id, text in (("t1", "first question"), ("t2", "second question")):
            await client.send({"type": "turn", "id": turn_id, "text": text, "options": {"max_tokens": 4, **GREEDY}})
            accepted.append(await client.until("accepted"))
            done.append(await client.until("done"))
        edit = {"type": "edit", "item_id": accepted[1]["item_id"], "text": "edited"}
        frame = {"type": "regenerate"} if kind == "regenerate" else edit
        await client.send({**frame, "id": "t3", "options": LONG})
        await client.until("token")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        process = serve_process(demo_dirs.model, tmp_path, port)
        await wait_ready(url, process)
        again = await Raw(url).open()
        await again.send({"type": "resume", "session": session, "token": token, "last_seq": 0})
        await again.until("resumed")
        await again.send({"type": "history"})
        after = await again.until("history")
        await again.close()
    finally:
        process.kill()
        process.wait(10)
    turns = after["turns"]
    assert len(turns) == 4 and path_of(after)[:2] == [("user", "first question", False), ("assistant", done[0]["text"], False)]
    assert (turns[3]["text"], turns[3]["partial"], turns[3]["id"]) == ("", True, "t3")
    if kind == "regenerate":
        assert turns[2]["text"] == "second question" and turns[3]["sibling_ids"][0] == done[1]["reply_id"]
    else:
        assert turns[2]["text"] == "edited" and turns[2]["sibling_ids"][0] == accepted[1]["item_id"]
