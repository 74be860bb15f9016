"""End to end: a live session resumed from the store reads its earlier live exchange as its summary (the frames
its prompt showed were never stored), and its next live turns lay their frames out on the timeline again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.client import GatewayClient
from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, record_submissions, start_server, wait_until
from tests.e2e.test_live_prefill import FRAMES
from tests.e2e.test_live_window_ws import GREEDY, stream
from tests.e2e.waits import next_of


@pytest.fixture(scope="module")
def brief(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """A server that unloads a detached session at once (it resumes from the store) and drops no test frame."""
    running = start_server(demo_dirs.model, Settings(session_grace_s=0.1, max_frames_per_second=1000.0))
    yield running
    running.stop()


async def test_after_a_resume_from_the_store_a_live_exchange_reads_as_its_summary(
    brief: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first live turn after the resume shows its whole window after the earlier exchange's summary; the
    next one holds that prompt, frames included, and shows only its new frame."""
    seen = record_submissions(brief, monkeypatch)
    async with GatewayClient(brief.ws_url) as client:
        await stream(client, [(FRAMES[0], 100), (FRAMES[1], 200)])
        assert (await client.turn("l1", "what is it?", live=True, **GREEDY)).done
        session, token = client.ready["session"], client.ready["resume_token"]
    await wait_until(lambda: session not in brief.app.state.ws.hub.live)
    async with GatewayClient(brief.ws_url) as client:
        await client.send({"type": "resume", "session": session, "token": token})
        await next_of(client.recv, "resumed")
        await stream(client, [(FRAMES[0], 300), (FRAMES[1], 400)])
        after = await client.turn("l2", "and now?", live=True, **GREEDY)
        await stream(client, [(FRAMES[2], 500)])
        next_ = await client.turn("l3", "and then?", live=True, **GREEDY)
    assert after.done and next_.done and not after.errors and not next_.errors
    summary, *_, resumed = seen[1].messages
    assert summary.text.startswith("[live camera: 2 frames") and not summary.images and len(resumed.images) == 2
    assert [len(m.images) for m in seen[2].messages] == [0, 0, 2, 0, 1]
    assert next_.done["usage"]["cached_tokens"] >= after.done["usage"]["prompt_tokens"]
