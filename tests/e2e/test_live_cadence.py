"""End to end on the demo engine: a bot asking live questions on a clock, or a watch, has its next question's frames
prefilled ahead, shortly before it is due, even while another session keeps the engine busy."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.client import GatewayClient
from gateway.config import Settings
from gateway.engine.contract import GenerationRequest, TurnHandle, TurnSink
from tests.conftest import DemoDirs, RunningServer, start_server, wait_until
from tests.e2e.test_live_warm_up import FRAMES, warm_ups
from tests.e2e.test_live_watch import until
from tests.e2e.test_live_window_ws import GREEDY, stream

GAP_S = 3.0  # between the bot's questions, start to start: the frame below comes long before the next is due
LEAD_S = 0.5  # live_warm_up_lead_s
# A watch's tick and lead (at most a quarter of the tick): the warm-up comes 4.5 s after a watch turn ends, and has
# 1.5 s to run before the next one.
WATCH_EVERY_S, WATCH_LEAD_S = 6.0, 1.5
# No frame dropped over the rate, and no turn of the busy sessions refused over theirs (short ones, back to back).
# And no warm-up per new frame (no busy share is below 0): those are planned on an engine idle at that instant and
# lightly loaded of late, which the first frame after a live turn may find between two of the busy sessions' turns
# (the load is measured from that frame on). These tests are about the clock's.
SETTINGS = Settings(max_frames_per_second=1000.0, turns_per_minute=100_000.0, live_warm_up_max_busy=-1.0)


def record_busy(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> list[tuple[GenerationRequest, int]]:
    """Every request `server`'s engine is handed from now on, with the turns it had running or waiting then."""
    seen: list[tuple[GenerationRequest, int]] = []
    submit = server.engine.submit

    def recording(request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        load = server.engine.load()
        seen.append((request, load.active + load.waiting))
        return submit(request, sink)

    monkeypatch.setattr(server.engine, "submit", recording)
    return seen


def warmed(seen: list[tuple[GenerationRequest, int]], session: str, since: int = 0) -> list[tuple[GenerationRequest, int]]:
    """The warm-ups for `session` (the busy sessions' histories, at the context's edge, are trimmed ahead too)."""
    return [(request, busy) for request, busy in seen[since:] if request.warm_up and request.affinity == session]


async def keep_busy(url: str, stop: asyncio.Event) -> None:
    """Two other sessions' long replies, each one after another, until `stop`: the engine busy all the while (one
    session's next turn comes a few ms after its last one's end; two are seldom both between turns)."""

    async def replies(client: GatewayClient) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            result = await client.turn(f"o{n}", "go on", temperature=0, max_tokens=100, ignore_eos=True)
            assert not result.errors, result.errors  # a refused turn would leave the engine idle

    async with GatewayClient(url) as one, GatewayClient(url) as two:
        await asyncio.gather(replies(one), replies(two))


async def frame_warmed_up_while_busy(
    server: RunningServer, bot: GatewayClient, seen: list[tuple[GenerationRequest, int]], since: int
) -> None:
    """While two other sessions keep the engine busy, a new frame for the bot starts no warm-up of its own (none among
    the requests from `since` on); one comes later all the same, over that frame, with turns on the engine, counted as
    ahead of a question due (`expected`); then the busy sessions stop."""
    me, expected = bot.ready["session"], warm_ups(server)[2]
    stop = asyncio.Event()
    busy = asyncio.ensure_future(keep_busy(server.ws_url, stop))
    await wait_until(lambda: server.engine.load().active > 0)
    await stream(bot, [(FRAMES[1], 200)])
    assert not warmed(seen, me, since)
    await wait_until(lambda: bool(warmed(seen, me, since)))
    ((ahead, turns_then),) = warmed(seen, me, since)
    assert turns_then > 0 and len(ahead.messages[-1].images) == 1 and warm_ups(server)[2] == expected + 1
    stop.set()
    await busy


async def test_a_bots_next_question_is_warmed_up_ahead_while_the_engine_is_busy(
    demo_dirs: DemoDirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four live questions GAP_S apart make a clock. A new frame arriving right after the fourth, while other
    sessions keep the engine busy, starts no warm-up (the next question is not due yet);
    LEAD_S before that question is due, the frame is warmed up all the same, with the other session's turn on the
    engine (it runs once the engine idles). The question then prefills only its text."""
    server = start_server(demo_dirs.model, SETTINGS.replace(live_warm_up_lead_s=LEAD_S))
    try:
        seen = record_busy(server, monkeypatch)
        async with GatewayClient(server.ws_url) as bot:
            await stream(bot, [(FRAMES[0], 100)])
            start_s = time.monotonic()
            for n in range(4):
                await asyncio.sleep(max(0.0, start_s + n * GAP_S - time.monotonic()))
                await bot.turn(f"l{n}", "what is it?", live=True, **GREEDY)
            await frame_warmed_up_while_busy(server, bot, seen, since=0)
            await wait_until(lambda: warm_ups(server)[0] == 1)  # prefilled to its end once the engine idled
            question = await bot.turn("l4", "and now?", live=True, **GREEDY)
        usage = question.done["usage"]
        assert usage["prompt_tokens"] - usage["cached_tokens"] <= 12  # its text and the turn's closing
    finally:
        server.stop()


async def test_a_watchs_next_turn_is_warmed_up_ahead_while_the_engine_is_busy(
    demo_dirs: DemoDirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch announces each tick as it sets it. After its first turn, a new frame arriving while another
    session keeps the engine busy starts no warm-up; WATCH_LEAD_S before the watch's next tick it is warmed up all
    the same, and that watch turn then prefills only its text."""
    server = start_server(demo_dirs.model, SETTINGS.replace(live_warm_up_lead_s=WATCH_LEAD_S))
    try:
        seen = record_busy(server, monkeypatch)
        async with GatewayClient(server.ws_url) as bot:
            await stream(bot, [(FRAMES[0], 100)])
            watch = {"type": "watch", "source": "camera", "every_s": WATCH_EVERY_S, "text": "what changed?", "max_tokens": 4}
            await bot.send(watch)
            await until(bot, "done", "watch-1")  # its own frame was warmed up ahead of it: the first tick's lead
            before = warm_ups(server)
            await frame_warmed_up_while_busy(server, bot, seen, since=len(seen))
            done, _ = await until(bot, "done", "watch-2")
        usage = done["usage"]
        assert warm_ups(server)[0] >= before[0] + 1 and usage["prompt_tokens"] - usage["cached_tokens"] <= 12
    finally:
        server.stop()
