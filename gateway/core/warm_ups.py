"""Prompts prefilled ahead while the engine idles: a live session's next live turn, or a history trimmed for its next turn."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any

from gateway.config import Settings
from gateway.core.frames_ahead import FramesAhead
from gateway.core.live_turn import live_turns, timeline_entry
from gateway.core.live_view import LiveView
from gateway.core.request import SamplingOptions
from gateway.core.session import PromptPlan, Session, UserTurn
from gateway.engine.contract import (
    ChatMessage,
    Engine,
    EngineFull,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TurnHandle,
)
from gateway.errors import GatewayError
from gateway.metrics import LiveFrameCounters

log = logging.getLogger(__name__)

Tools = Sequence[dict[str, Any]]  # OpenAI function definitions, for the chat template
# A session's defaults as its turns resolve them (core/turns.py): max_tokens, the adapter, the tools.
Defaults = Callable[[SamplingOptions], tuple[int, str | None, Tools]]
# The frames a session's next live turn would read, for a warm-up ahead of it; None while there is nothing to warm.
Unread = Callable[[], LiveView | None]

_TURN_ID = "warm-up"  # the id its preview plans the turn under; nothing is recorded under it
_BUSY_WINDOW_S = 2.0  # the engine's busy share is measured over about this long, the last whole window


class WarmUps:
    """Each session's next live turn, prefilled ahead of its question: the prompt a live turn asking nothing would
    have now (its history, then the window's frames not shown yet and their markers), planned on a fork of the
    session's timeline so nothing of the session changes, and submitted as a warm-up: the engine prefills it only
    when it has nothing else to do, and holds its KV for the question, which then prefills only its text. (A live
    question after 4 new frames: TTFT 257 ms cold, 87 ms warmed, engine alone: scripts/warm_frames_probe.py.)

    At most one per session, from its planning to its end; the session's own turn cancels one the engine has not
    taken yet (a turn waits for one prefill pass at most: engine/local/waiting.py). Only on an engine that
    `warms_up`, and only where frames reach the model as images (a clip's layout changes with every frame)."""

    def __init__(
        self, engine: Engine, settings: Settings, counters: LiveFrameCounters, frames_ahead: FramesAhead, defaults: Defaults
    ) -> None:
        self.engine, self.settings, self.counters = engine, settings, counters
        self.frames_ahead, self.defaults = frames_ahead, defaults
        self._running: dict[str, tuple[asyncio.Task[None], TurnHandle]] = {}  # by session id
        self._expected: dict[str, asyncio.TimerHandle] = {}  # by session id: its next question's warm-up, timed
        self._closed = False  # the service is closing: nothing new is timed or launched
        self._since: tuple[float, float] | None = None  # (when, the engine's busy seconds then): the window's start
        self.busy_share = 0.0  # the engine's, over the last whole window (idle, until one is measured)

    @property
    def trims_ahead(self) -> bool:
        engine = self.engine
        return self.settings.trim_ahead and engine.warms_up and not engine.reads_video

    def after_turn(self, session: Session, prompt_tokens: int, reply_tokens: int, max_tokens: int | None = None) -> None:
        """A turn of `session` has ended and joined its history. Where its history has come within the trim
        headroom of the context's edge (what this turn's prompt and reply held says so without counting), see
        whether the next turn would drop old exchanges, and if so trim ahead: fix those drops for the next turns
        (`Session.trim_ahead`) and re-prefill the prompt they leave while the engine is idle (a warm-up: a chunk
        at a time, giving way to every turn), so the turn that would have prefilled it whole finds its KV held.
        Whichever turn comes next, a live question or a text one, reads that prompt: both start with the history.
        Likewise where the session's live timeline is so full that its next live turn would shed old exchanges'
        frames (`_sheds`): they are shed now, and the prompt re-prefilled ahead. `max_tokens`: what the turn asked
        for, taken as the next one's (None: the session's default). A warm-up still under way for the session is
        stale now (its prompt lacks this exchange): it goes."""
        session.asked_max_tokens = max_tokens
        if not self.trims_ahead:
            return
        window = self.engine.context_tokens
        max_tokens = max_tokens if max_tokens is not None else self.defaults(session.defaults)[0]
        near = prompt_tokens + reply_tokens >= window - max_tokens - self.settings.trim_headroom_tokens(window)
        if not near and not self._sheds(session):
            return
        running = self._running.pop(session.id, None)
        if running is not None:
            running[1].cancel()
            running[0].cancel()
        self._launch(session.id, lambda handle: self._trim_ahead(session, handle, max_tokens))

    def _sheds(self, session: Session) -> bool:
        """Whether the session's next live turn, its window full, would shed old exchanges' frames from its timeline
        (`LiveTimeline.begin`): the prompt's opening would change there, as at a trim."""
        timeline = session.timeline
        sooner = int(spread(session.id) * (timeline.max_frames // 4))  # see `spread`
        return timeline.frames > 0 and timeline.frames + self.settings.live_window_frames > timeline.max_frames - sooner

    async def _trim_ahead(self, session: Session, handle: TurnHandle, max_tokens: int) -> None:
        """Shed the timeline's oldest frames where the next live turn would (as it would: until half its frames
        remain, a full window's included); plan the next turn as one asking nothing, with room kept for its question
        (half the headroom, a live question bringing its new frames, and up to half more by the session's `spread`),
        fixing the exchanges that drops; where either changed the prompt, submit it as a warm-up."""
        settings, engine = self.settings, self.engine
        timeline, window_frames = session.timeline, settings.live_window_frames
        shed = self._sheds(session)
        if shed:
            timeline.shed(lambda: timeline.frames + window_frames <= timeline.max_frames // 2)
        _, adapter, tools = self.defaults(session.defaults)
        window = engine.context_tokens
        headroom = settings.trim_headroom_tokens(window)
        room = max_tokens + headroom // 2 + int(spread(session.id) * headroom / 2)
        path = [item.id for item in session.conversation.path]

        async def count(messages: Sequence[ChatMessage]) -> int:
            return await engine.count_prompt_tokens(messages, tools=tools)

        turn = UserTurn(id=_TURN_ID, text="")
        preview = session.timeline.fork(session.conversation.path)
        try:
            plan = await session.plan(turn, room, window, count, None, settings.trim_headroom, timeline=preview)
        except GatewayError:
            return
        if not self._fix_drops(session, path, plan) and not shed:
            return
        self.counters.trims_ahead.inc()
        await self._submit(session, plan.messages, adapter, tools, handle)

    @property
    def enabled(self) -> bool:
        engine = self.engine
        return self.settings.live_warm_up_frames > 0 and engine.warms_up and not engine.reads_video

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._running

    def due(self, session: Session, unread: int) -> bool:
        """Whether a session whose read window has gathered `unread` new frames should warm its next live turn up
        now: enough of them, none under way for it, the engine idle and busy at most `live_warm_up_max_busy` of the
        last whole window. A warm-up per new frame on a busy engine mostly waits until the session's own turn
        cancels it (`gateway bench --live`, 8 sessions: 27-38 of about 62 dropped), its planning spent: token counts
        on the pool real turns count on; and turns arriving during their passes wait more than their questions save
        (docs/engine.md). Ahead of a question due soon, `expect` warms up on any load instead."""
        if not self.enabled or unread < self.settings.live_warm_up_frames or session.id in self._running:
            return False
        load = self.engine.load()
        self._measure(load.phase_seconds)
        return load.active == 0 and load.waiting == 0 and self.busy_share <= self.settings.live_warm_up_max_busy

    def expect(self, session: Session, unread: Unread) -> None:
        """A live turn of `session`, asked by its client, starts now. Where its questions come on a clock (`Cadence`),
        its next one is warmed up `live_warm_up_lead_s` before it is due (at most a quarter of the time to it), however
        busy the engine: `unread()` gives the frames that question would read (None while the session has a turn of
        its own, or nothing new). It is asked every quarter of the lead until the lead after the due time, a warm-up
        started whenever it gives frames and none is under way: one warm-up of every frame gathered since (and one
        more for frames that come meanwhile), where a warm-up per frame on a busy engine costs more passes than it
        saves."""
        session.live_cadence.asked(time.monotonic())
        self._time_next(session, unread)

    def announce(self, session: Session, due_s: float | None, unread: Unread) -> None:
        """`session`'s next live question comes at `due_s` (monotonic), as its asker knows (a watch): warmed up ahead
        as `expect` does, with no clock to read. None: the asker has stopped (back to the session's own clock)."""
        session.live_cadence.announce(due_s)
        self._time_next(session, unread)

    def _time_next(self, session: Session, unread: Unread) -> None:
        self._untime(session.id)
        now_s, due_s = time.monotonic(), session.live_cadence.next_expected()
        if not self.enabled or self._closed or due_s is None or due_s <= now_s:
            return
        # Looked for from the lead before it to the lead after it (a clock's ticks wander by a turn's length), the lead
        # at most a quarter of the time to it: on a fast clock (a watch every second) it would cover every moment.
        lead_s = min(self.settings.live_warm_up_lead_s, (due_s - now_s) / 4)
        if lead_s > 0:
            self._time(session, unread, due_s - lead_s - now_s, due_s + lead_s, lead_s / 4)

    def _time(self, session: Session, unread: Unread, delay_s: float, until_s: float, step_s: float) -> None:
        loop, apart = asyncio.get_running_loop(), contextvars.Context()  # not the turn's (its trace span): see `_launch`
        handle = loop.call_later(max(0.0, delay_s), self._anticipate, session, unread, until_s, step_s, context=apart)
        self._expected[session.id] = handle

    def _anticipate(self, session: Session, unread: Unread, until_s: float, step_s: float) -> None:
        """The session's next question is due about now: warm up what `unread()` gives, and look again a little later
        (its own turn, when it comes, ends the looking: `expect` times the next)."""
        del self._expected[session.id]
        view = None if session.id in self._running else unread()
        if view is not None:
            self.counters.warm_ups_expected.inc()
            self.start(session, view)
        if time.monotonic() + step_s < until_s:
            self._time(session, unread, step_s, until_s, step_s)

    def _untime(self, session_id: str) -> None:
        timer = self._expected.pop(session_id, None)
        if timer is not None:
            timer.cancel()

    def forget(self, session_id: str) -> None:
        """The session is gone: its timer goes, and its warm-up under way too."""
        self._untime(session_id)
        running = self._running.pop(session_id, None)
        if running is not None:
            running[1].cancel()
            running[0].cancel()

    def _measure(self, phases: dict[str, float]) -> None:
        """The engine's busy share (every phase of its generation thread but waiting) over the last whole window."""
        now, busy = time.monotonic(), sum(seconds for phase, seconds in phases.items() if phase != "waiting")
        if self._since is None:
            self._since = (now, busy)
        elif now - self._since[0] >= _BUSY_WINDOW_S:
            self.busy_share = (busy - self._since[1]) / (now - self._since[0])
            self._since = (now, busy)

    def start(self, session: Session, view: LiveView) -> None:
        """Warm `session`'s next live turn up over `view`, unless one is under way for it already."""
        if not self.enabled or self._closed or session.id in self._running:
            return
        self._launch(session.id, lambda handle: self._warm(session, view, handle))

    def _launch(self, session_id: str, work: Callable[[TurnHandle], Coroutine[Any, Any, None]]) -> None:
        """Run `work` (its warm-up's handle given) as the session's one warm-up under way, until it ends."""
        if self._closed:
            return
        handle = TurnHandle()
        # In a context of its own: launched from a turn's (its end, its start), it is no part of that turn's trace.
        task = asyncio.get_running_loop().create_task(work(handle), context=contextvars.Context())
        self._running[session_id] = (task, handle)
        task.add_done_callback(lambda _: self._ended(session_id, task))

    def cancel(self, session_id: str) -> None:
        """The session's own turn starts: its warm-up goes unless the engine has taken it (it then helps the turn)."""
        running = self._running.get(session_id)
        if running is not None and not running[1].admitted.is_set():
            running[1].cancel()
            running[0].cancel()

    def close(self) -> None:
        self._closed = True
        for timer in self._expected.values():
            timer.cancel()
        self._expected.clear()
        for task, handle in list(self._running.values()):
            handle.cancel()
            task.cancel()

    def _ended(self, session_id: str, task: asyncio.Task[None]) -> None:
        if self._running.get(session_id, (None,))[0] is task:
            del self._running[session_id]
        if not task.cancelled() and task.exception() is not None:  # retrieved: a warm-up only ever saves time
            log.warning("a live warm-up failed", exc_info=task.exception())

    async def _warm(self, session: Session, view: LiveView, handle: TurnHandle) -> None:
        counters = self.counters
        try:
            prefilled = await self._prefill(session, view, handle)
        except asyncio.CancelledError:  # the session's own turn came first
            counters.warm_ups_dropped.inc()
            raise
        (counters.warm_ups if prefilled else counters.warm_ups_dropped).inc()

    async def _prefill(self, session: Session, view: LiveView, handle: TurnHandle) -> bool:
        """Plan the warm-up and see it through the engine: whether it prefilled to the end."""
        images = tuple(frame.image for frame in view.snapshot.frames)
        try:
            await self.frames_ahead.ready(images)
            await self.engine.prepare(images)
            messages, adapter, tools = await self._prompt(session, view)
        except GatewayError:  # what the question would be refused for: it says why when it comes
            return False
        return await self._submit(session, messages, adapter, tools, handle)

    async def _submit(
        self, session: Session, messages: list[ChatMessage], adapter: str | None, tools: Tools, handle: TurnHandle
    ) -> bool:
        """Submit `messages` as the session's warm-up (`max_tokens` 1) and await its end: whether it prefilled to the
        end (False: the engine's warm-up line was full, or it was cancelled)."""
        ended: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        request = GenerationRequest(
            messages, SamplingParams(temperature=0.0, max_tokens=1), handle, adapter, session.id, tools, warm_up=True
        )
        try:
            self.engine.submit(request, _Ended(ended))
        except EngineFull:
            return False
        return (await ended).finish_reason not in ("cancelled", "error")

    def _fix_drops(self, session: Session, path: list[str], plan: PromptPlan) -> bool:
        """Fix `plan`'s drops as the next turns' least (`Session.trim_ahead`: they read its prompt) where it was made
        on the session's path as it still is (`path`, taken when its planning began): whether they were fixed."""
        return path == [item.id for item in session.conversation.path] and session.trim_ahead_at(plan)

    async def _prompt(self, session: Session, view: LiveView) -> tuple[list[ChatMessage], str | None, Tools]:
        """The messages a live turn with no text of its own would be prompted with now (as core/prompts.py and
        the turn service lay one out, on the session's defaults, asking for the last turn's `max_tokens`), its
        adapter and tools. The session is unchanged, but where that prompt drops old exchanges: they are fixed
        for the next turns (`_fix_drops`), as a trim ahead would."""
        settings = self.settings
        max_tokens, adapter, tools = self.defaults(session.defaults)
        max_tokens = session.asked_max_tokens or max_tokens
        path = [item.id for item in session.conversation.path]
        turn = UserTurn(id=_TURN_ID, text="")
        prompted, recorded = live_turns(turn, view, settings.live_history_last_frame)
        preview = session.timeline.fork(session.conversation.path)
        preview.max_frames = settings.live_history_frames
        prompted = replace(prompted, images=preview.begin(turn.id, timeline_entry(turn, view, recorded)))

        async def count(messages: Sequence[ChatMessage]) -> int:
            return await self.engine.count_prompt_tokens(messages, tools=tools)

        window, headroom = self.engine.context_tokens, settings.trim_headroom
        plan = await session.plan(prompted, max_tokens, window, count, None, headroom, timeline=preview)
        if self._fix_drops(session, path, plan):
            self.counters.trims_ahead.inc()
        return plan.messages, adapter, tools


def spread(session_id: str) -> float:
    """The session's own share in [0, 1), the same at every call: how much sooner, within the headroom (or a quarter
    of the timeline's frames), it trims ahead. Sessions that run the same loop reach the context's edge in the same
    round, and their re-prefills ahead together need more idle time than the engine has: in a 240 s `gateway bench
    --live`, 8 sessions trimmed at the same round, and the text turns after 16 of those trims found nothing of their
    prompt prefilled. Spread, their trims fall in different rounds."""
    return int(hashlib.sha256(session_id.encode()).hexdigest()[:8], 16) / 2**32


class _Ended:
    """A warm-up's sink: nothing it generates is read; its end resolves the future its task awaits."""

    def __init__(self, ended: asyncio.Future[GenerationResult]) -> None:
        self.ended = ended

    def on_queued(self, position: int) -> None:
        pass

    def on_token(self, text: str) -> None:
        pass

    def on_done(self, result: GenerationResult) -> None:
        if not self.ended.done():
            self.ended.set_result(result)
