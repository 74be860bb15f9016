"""The turn service: one owner of a turn's life for both front ends, from the validated request to the recorded end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from gateway.config import Settings
from gateway.core.attachments import Attachments
from gateway.core.events import Accepted, Ended, Listener
from gateway.core.frames_ahead import FramesAhead
from gateway.core.grammar_pool import CompileQuota, pool_for
from gateway.core.image_ledger import ImageLedger
from gateway.core.limits import TurnLimits
from gateway.core.live_view import LiveFrames
from gateway.core.prompts import engine_failures, session_turns
from gateway.core.relay import EventSink, Observed
from gateway.core.request import SamplingOptions, TurnRequest
from gateway.core.sampling import resolve_params, server_defaults
from gateway.core.session import Session, UserTurn
from gateway.core.tool_grammars import checked_tools
from gateway.core.tool_plan import ToolPlan, plan_tools
from gateway.core.tracing import Tracer, TurnTrace
from gateway.core.turn_types import Drain, SessionKeeper, StartedTurn, TurnPace
from gateway.core.warm_ups import WarmUps
from gateway.engine.contract import (
    ChatMessage,
    Engine,
    EngineFull,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TurnHandle,
    TurnSink,
)
from gateway.errors import ErrorCode, GatewayError, RetryLater, naming
from gateway.metrics import Metrics
from gateway.tools.registry import detect


class TurnService(TurnLimits):
    """Validation and limits, images, sampling, planning and trimming, submission, the typed event stream,
    and the end of every turn (record, store, final event): written once for WebSocket and HTTP."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics, drain: Drain | None = None) -> None:
        if not 0 <= settings.trim_headroom < 1:
            raise ValueError(f"trim_headroom is a share of the context window, at least 0 and below 1: {settings.trim_headroom}")
        super().__init__(settings, engine)
        self.metrics = metrics
        self.drain = drain or Drain()
        self.in_flight = 0  # turns submitted and not yet done, all front ends together
        self.server_defaults = server_defaults(settings)
        # One bound for image memory: sessions' images and the engine's processed ones together. The cache
        # always keeps a share (an eighth, at most image_cache_bytes): at 0 a turn's images, processed ahead
        # on the image pool, would be processed again on the generation thread, stalling every turn.
        floor = min(settings.image_cache_bytes, settings.max_total_image_bytes // 8)
        self.images = ImageLedger(settings.max_total_image_bytes - floor, lambda room: engine.limit_image_cache(room + floor))
        engine.limit_image_cache(settings.max_total_image_bytes)
        self.attachments = Attachments(settings)
        workers = max(1, settings.image_workers)
        # A few per image worker, one running on each; then encoded while the engine is idle (`live_encode_ahead`).
        self.frames_ahead = FramesAhead(engine, 4 * workers, workers, encode=settings.live_encode_ahead)
        # Sessions' next live turns, prefilled while the engine is idle.
        self.warm_ups = WarmUps(engine, settings, metrics.live_frames, self.frames_ahead, self._defaults)
        self.pace = TurnPace(engine)  # for Retry-After
        # Given the count of turns that would wait for a slot and of those cancelled (whatever the cause) that
        # free theirs within a step, stops as many turns nobody listens to as the cancelled ones do not cover
        # (the hub's detached sessions'), so an attached client is never queued or refused behind abandoned work.
        self.make_room: Callable[[int], int] | None = None
        # Given a session, the image bytes it wants and the least it needs, unloads detached sessions holding
        # images until it has what it wants, and none when even all of them would not give what it needs.
        self.free_images: Callable[[str, int, int], int] | None = None
        self._handles: dict[int, TurnHandle] = {}  # running turns', by id(): a cancelled one frees its slot within a step
        self.tool_syntax = detect(engine.chat_template)  # how this model writes tool calls
        self.grammars = pool_for(engine, settings)
        self.tracer = Tracer.from_endpoint(settings.otlp_traces_endpoint)
        self._tasks: set[asyncio.Task[None]] = set()  # turns' ends waiting for their store writes

    def close(self) -> None:
        self.warm_ups.close()
        self.grammars.close()
        self.tracer.close()
        self.attachments.close()

    async def settle(self) -> None:
        """Every turn's end that still waits for its store write, delivered."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def check_open(self) -> None:
        if self.drain.on:
            raise GatewayError(ErrorCode.SHUTTING_DOWN, "the server is shutting down; reconnect shortly")

    async def check_grammars(self, options: SamplingOptions, quota: CompileQuota) -> None:
        """An unusable schema or regex is refused now, and so is an unusable tool parameters schema: each
        compiled on the grammar pool, within the client's compile rate."""
        with naming("response_format"):
            await self.grammars.response_grammar(options.response_format, quota)
        if options.tools:
            with naming("tools"):
                await checked_tools(self.grammars, options.tools, self.tool_syntax, quota)

    # ---- a session's turn (WebSocket) -------------------------------------------------------------

    async def start(
        self, session: Session, request: TurnRequest, listener: Listener, quota: CompileQuota, keeper: SessionKeeper
    ) -> StartedTurn:
        """Check, load, plan and submit one turn of `session`. Its end is this service's: the exchange is
        recorded, `keeper` makes it durable, and only then does `listener` hear `Ended`. One trace span."""
        trace = self.tracer.turn(request.traceparent, "websocket")
        with trace.opened():
            return await self._start(session, request, listener, quota, keeper, trace)

    async def _start(
        self,
        session: Session,
        request: TurnRequest,
        listener: Listener,
        quota: CompileQuota,
        keeper: SessionKeeper,
        trace: TurnTrace,
    ) -> StartedTurn:
        trace.phase("admission")
        self.warm_ups.cancel(session.id)  # not taken by the engine yet: this turn prefills what it would have
        self.check_open()
        self.check_turn(request)
        await self.compile_grammars(session.defaults, request.options, quota)
        trace.phase("images")
        keep_last = self.settings.live_history_last_frame
        session.timeline.max_frames = self.settings.live_history_frames
        prompted, turn = await session_turns(self.attachments, session, request, keep_last, self.engine.reads_video)
        trace.phase("planning")
        room = self.image_room(session, prompted)
        session.make_image_room(room - prompted.image_bytes)  # inactive branches' images go before the path's
        # Reserved before planning awaits, so a turn checked meanwhile sees this one's room as taken; given back
        # if the turn goes no further.
        held = session.held_image_bytes
        self.images.hold(session.id, max(held, min(room, held + turn.image_bytes)))
        try:
            started = await self._plan_and_submit(session, request, (prompted, turn), room, listener, keeper, trace)
        except BaseException:
            self.images.hold(session.id, session.held_image_bytes)
            raise
        return started

    async def _plan_and_submit(
        self,
        session: Session,
        request: TurnRequest,
        turns: tuple[UserTurn, UserTurn],  # as the prompt reads it, as the history keeps it
        room: int,
        listener: Listener,
        keeper: SessionKeeper,
        trace: TurnTrace,
    ) -> StartedTurn:
        prompted, turn = turns
        params, model = self.resolve(session.defaults, request.options)
        tools = self.tools_for(session.defaults, request.options)
        params = tools.params(params)

        async def count(messages: Sequence[ChatMessage]) -> int:
            return await self.engine.count_prompt_tokens(messages, tools=tools.tools)

        with engine_failures(bool(prompted.images)):
            await self.frames_ahead.ready(prompted.images)
            await self.engine.prepare(prompted.images)
            window = self.engine.context_tokens
            plan = await session.plan(prompted, params.max_tokens, window, count, room, self.settings.trim_headroom)
        self.check_open()  # planning awaited: the server may have begun draining meanwhile
        item_id, reply_id = session.fresh_ids(turn)
        started = StartedTurn(
            turn,
            plan,
            TurnHandle(),
            session.epoch,
            model,
            trace,
            item_id=item_id,
            reply_id=reply_id,
            max_tokens=params.max_tokens,
        )
        generation = GenerationRequest(
            plan.messages, params, started.handle, adapter=model, affinity=session.id, tools=tools.tools
        )
        live = LiveFrames.of(request.live) if request.live is not None else None
        self.launch(session, started, generation, tools, listener, keeper, live)
        return started

    def launch(
        self,
        session: Session,
        started: StartedTurn,
        generation: GenerationRequest,
        tools: ToolPlan,
        listener: Listener,
        keeper: SessionKeeper,
        live: LiveFrames | None = None,
    ) -> None:
        """Submit a session's planned turn: `accepted` first (before any engine event: those come by call_soon),
        its end recorded by `_end`."""

        def end(result: GenerationResult) -> None:
            self._end(session, started, result, listener, keeper)

        plan = started.plan
        self.submit(generation, tools.sink(EventSink(listener, end)), started.trace, tools.syntax is not None)
        session.drop_oldest(plan.dropped_turns)
        self.images.hold(session.id, session.held_image_bytes + started.turn.image_bytes)
        listener(Accepted(plan.prompt_tokens, plan.dropped_turns, live, started.item_id, started.reply_id))

    def _end(
        self, session: Session, started: StartedTurn, result: GenerationResult, listener: Listener, keeper: SessionKeeper
    ) -> None:
        """The turn's end, in one place: recorded at once (a partial reply when cancelled), made durable, then
        `Ended`; which waits for the store no longer than store_timeout_s (a hung store must not hold a reply)."""
        recorded = self.record(session, started, result, held=keeper.turn_ended(started, result))
        if recorded and result.finish_reason != "error":
            self.warm_ups.after_turn(session, result.prompt_tokens, len(result.token_ids), started.max_tokens)
        started.trace.phase("store_write")

        async def deliver() -> None:
            saved = asyncio.ensure_future(keeper.persist(started))
            await asyncio.wait({saved}, timeout=self.settings.store_timeout_s)
            listener(Ended(result, started.reply_id if recorded else None))
            started.trace.end()

        task = asyncio.get_running_loop().create_task(deliver())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def record(self, session: Session, started: StartedTurn, result: GenerationResult, held: bool = True) -> bool:
        """The turn's exchange joins the history (partial when cancelled); a failed one does not.
        `held`: the session is still in memory, so its images still count."""
        recorded = False
        if result.finish_reason != "error":
            cancelled = result.finish_reason == "cancelled"
            headroom = self.settings.trim_headroom
            ids, calls = (started.item_id, started.reply_id), result.tool_calls
            joins = started.answers, started.edits
            recorded = session.record(started.turn, result.text, cancelled, started.epoch, calls, headroom, ids, *joins)
        if held:
            self.images.hold(session.id, session.held_image_bytes)
        return recorded

    def resolve(self, defaults: SamplingOptions, options: SamplingOptions | None) -> tuple[SamplingParams, str | None]:
        params = resolve_params(self.server_defaults, defaults, options, self.settings.max_tokens_limit)
        model = options.model if options is not None and options.model is not None else defaults.model
        return params, self.adapter_for(model)

    def _defaults(self, defaults: SamplingOptions) -> tuple[int, str | None, Sequence[dict[str, Any]]]:
        """A session's defaults as a turn asking nothing of its own would have them: max_tokens, adapter, tools."""
        params, model = self.resolve(defaults, None)
        return params.max_tokens, model, self.tools_for(defaults, None).tools

    def tools_for(self, defaults: SamplingOptions, options: SamplingOptions | None) -> ToolPlan:
        """The turn's tools and tool_choice, each from its options over the session's defaults."""
        tools = options.tools if options is not None and options.tools is not None else defaults.tools
        choice = options.tool_choice if options is not None and options.tool_choice is not None else defaults.tool_choice
        return plan_tools(tools, choice, self.tool_syntax)

    async def compile_grammars(self, defaults: SamplingOptions, options: SamplingOptions | None, quota: CompileQuota) -> None:
        """The turn's grammars, compiled (or found compiled) on the pool before anything uses them: so
        `resolve` and `tools_for` look them up on the loop, never compile there."""
        if options is not None:
            await self.check_grammars(options, quota)
        fmt = options.response_format if options is not None and options.response_format is not None else defaults.response_format
        with naming("response_format"):
            await self.grammars.response_grammar(fmt, quota)
        with naming("tools"):
            await self.grammars.checked(self.tools_for(defaults, options).grammar, "tools", quota)

    def image_room(self, session: Session, turn: UserTurn) -> int:
        """How many image bytes this session may hold with the turn: its own bound, and what the other
        sessions leave of the process-wide one."""
        s = self.settings
        if turn.image_bytes > s.max_session_image_bytes:
            message = f"the turn's images are {turn.image_bytes} bytes; a session holds at most {s.max_session_image_bytes}"
            raise GatewayError(ErrorCode.TOO_LARGE, message, field="images")
        wanted = min(s.max_session_image_bytes, session.held_image_bytes + turn.image_bytes)
        if turn.image_bytes and self.free_images is not None and wanted > self.images.room_for(session.id):
            self.free_images(session.id, wanted, turn.image_bytes)
        room = min(s.max_session_image_bytes, self.images.room_for(session.id))
        if turn.image_bytes > room:
            raise RetryLater(
                ErrorCode.OVERLOADED, "the server holds all the images it can; try again later", self.retry_after_ms()
            )
        return room

    def forget(self, session: Session) -> None:
        """The session is gone from memory: its images no longer count, and nothing is warmed up for it."""
        self.images.release(session.id)
        self.warm_ups.forget(session.id)

    # ---- the engine --------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, sink: TurnSink, trace: TurnTrace, parses_tools: bool) -> None:
        request.traceparent = trace.traceparent  # an upstream's spans join the turn's trace
        load = self.engine.load()
        live = sum(not handle.cancelled.is_set() for handle in self._handles.values())
        # Both lag (the engine counts a cancelled turn until its next step, this loop an ended one until its end
        # arrives): a turn holds a place only while both count it, so the smaller never undercounts who waits.
        waiting = min(load.active + load.waiting, live) + 1 - load.capacity
        if waiting > 0 and self.make_room is not None:
            self.make_room(waiting)
        try:
            self.engine.submit(request, Observed(sink, partial(self.turn_ended, handle=request.handle), trace, parses_tools))
        except EngineFull:
            raise RetryLater(
                ErrorCode.OVERLOADED, "the server is at capacity; try again shortly", self.retry_after_ms()
            ) from None
        self.in_flight += 1
        self._handles[id(request.handle)] = request.handle
        trace.submitted(request.adapter or self.engine.model_id)
        self.metrics.adapters.started(request.adapter)

    def turn_ended(self, result: GenerationResult, handle: TurnHandle) -> None:
        self.in_flight -= 1
        self._handles.pop(id(handle), None)
        self.metrics.observe_turn(result)
        self.pace.observe(result)

    def retry_after_ms(self) -> int:
        return self.pace.retry_after_ms()
