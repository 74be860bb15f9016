"""Frames processed ahead of their turn: each once, bounded, one per worker at a time, a failure left to its turn."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.core.frames_ahead import FramesAhead
from gateway.engine.contract import ChatImage
from tests.conftest import chat_image


class Preparing:
    """An engine's `prepare` that runs until released, recording what it was asked for."""

    reads_video = False

    def __init__(self, fails: bool = False) -> None:
        self.asked: list[str] = []
        self.release = asyncio.Event()
        self.fails = fails

    async def prepare(self, images: Sequence[ChatImage]) -> None:
        self.asked += [image.sha256 for image in images]
        await self.release.wait()
        if self.fails:
            raise ValueError("the processor refused it")


FRAMES = [chat_image((40 * n, 20, 20), (16, 12), "JPEG") for n in range(4)]


async def test_a_frame_is_processed_once_and_a_turn_waits_for_it() -> None:
    """A frame started twice is processed once; `ready` returns only once its processing has ended."""
    engine = Preparing()
    ahead = FramesAhead(engine, max_frames=4, workers=4)  # type: ignore[arg-type]
    ahead.start(FRAMES[0])
    ahead.start(FRAMES[0])
    waiting = asyncio.ensure_future(ahead.ready([FRAMES[0], FRAMES[1]]))
    await asyncio.sleep(0)
    assert engine.asked == [FRAMES[0].sha256] and not waiting.done()
    engine.release.set()
    await waiting
    assert engine.asked == [FRAMES[0].sha256]


async def started(engine: Preparing, frames: Sequence[ChatImage], max_frames: int, workers: int) -> FramesAhead:
    """A FramesAhead over `engine` with `frames` started, once the loop has run what they began."""
    ahead = FramesAhead(engine, max_frames=max_frames, workers=workers)  # type: ignore[arg-type]
    for frame in frames:
        ahead.start(frame)
    await asyncio.sleep(0)
    return ahead


async def test_frames_past_the_bound_are_left_to_their_turn() -> None:
    """At most `max_frames` frames are under way; the next is not started (its turn processes it)."""
    engine = Preparing()
    ahead = await started(engine, FRAMES[:3], max_frames=2, workers=2)
    assert engine.asked == [FRAMES[0].sha256, FRAMES[1].sha256]
    engine.release.set()
    await ahead.ready(FRAMES)
    ahead.start(FRAMES[3])  # room again once they ended
    await ahead.ready(FRAMES)
    assert engine.asked[-1] == FRAMES[3].sha256


async def test_a_failed_frame_is_left_to_its_turn_and_never_raises_here() -> None:
    """A frame the engine cannot process ends quietly here: the turn's own `prepare` reports it."""
    engine = Preparing(fails=True)
    ahead = FramesAhead(engine, max_frames=2, workers=2)  # type: ignore[arg-type]
    ahead.start(FRAMES[0])
    engine.release.set()
    await ahead.ready([FRAMES[0]])
    await asyncio.sleep(0)
    ahead.start(FRAMES[0])  # no longer under way: it may be tried again
    assert engine.asked == [FRAMES[0].sha256]
    await ahead.ready([FRAMES[0]])
    assert engine.asked == [FRAMES[0].sha256] * 2


async def test_an_engine_that_reads_clips_processes_no_frames_ahead() -> None:
    """Where the window goes to the model as one clip, frames are not processed as images."""
    engine = Preparing()
    engine.reads_video = True
    FramesAhead(engine, max_frames=2, workers=2).start(FRAMES[0])  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert engine.asked == []


class OneAtATime(Preparing):
    """An engine's `prepare` that runs until its frame is released by name, recording what it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.releases: dict[str, asyncio.Event] = {}

    async def prepare(self, images: Sequence[ChatImage]) -> None:
        self.asked += [image.sha256 for image in images]
        for image in images:
            await self.releases.setdefault(image.sha256, asyncio.Event()).wait()

    def finish(self, image: ChatImage) -> None:
        self.releases.setdefault(image.sha256, asyncio.Event()).set()


async def test_one_frame_per_worker_runs_and_the_rest_wait_here_in_order() -> None:
    """Past `workers` frames running, the others wait here (not on the engine's pool), each started as one ends, oldest first."""
    engine = OneAtATime()
    ahead = await started(engine, FRAMES[:3], max_frames=4, workers=1)
    assert engine.asked == [FRAMES[0].sha256]
    engine.finish(FRAMES[0])
    await ahead.ready([FRAMES[0]])
    await asyncio.sleep(0)
    assert engine.asked == [FRAMES[0].sha256, FRAMES[1].sha256]
    engine.finish(FRAMES[1])
    engine.finish(FRAMES[2])
    await ahead.ready([FRAMES[1]])
    await asyncio.sleep(0)
    await ahead.ready([FRAMES[2]])
    assert engine.asked == [frame.sha256 for frame in FRAMES[:3]]


async def test_a_turn_takes_its_waiting_frames_and_waits_only_for_those_running() -> None:
    """A turn never waits behind frames queued ahead of its own: its frames still waiting here are handed to it
    (processed by its own `prepare`, never here after), and only those already running are awaited."""
    engine = OneAtATime()
    ahead = await started(engine, FRAMES[:3], max_frames=4, workers=1)
    await ahead.ready([FRAMES[1], FRAMES[2]])  # FRAMES[0] (another turn's) still running: not awaited
    assert engine.asked == [FRAMES[0].sha256]
    waiting = asyncio.ensure_future(ahead.ready([FRAMES[0]]))
    await asyncio.sleep(0)
    assert not waiting.done()
    engine.finish(FRAMES[0])
    await waiting
    await asyncio.sleep(0)
    assert engine.asked == [FRAMES[0].sha256]  # the frames the turn took were not processed here
