"""The turn service: one owner of a turn's life for both front ends, from the validated request to the recorded end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.config import Settings
from gateway.core.attachments import Attachments
from gateway.core.events import Accepted, Ended, Listener
from gateway.core.grammar_pool import CompileQuota, GrammarPool
from gateway.core.image_ledger import ImageLedger
from gateway.core.limits import TurnLimits
from gateway.core.relay import EventSink, Observed
from gateway.core.request import ConversationRequest, SamplingOptions, TurnRequest
from gateway.core.sampling import resolve_params, server_defaults
from gateway.core.session import PromptPlan, Session, UserTurn
from gateway.core.tool_plan import ToolPlan, plan_tools
from gateway.engine.contract import (
    ChatImage,
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

log = logging.getLogger("gateway.core.turns")


@dataclass
class StartedTurn:
    """A session's turn on the engine: what to record when it ends, and the grip to cancel it."""

    turn: UserTurn
    plan: PromptPlan
    handle: TurnHandle
    epoch: int
    model: str | None  # the adapter it runs on; None is the base model
    item_id: str | None = None  # the ids its user message and reply will have (named now, for `accepted`)
    reply_id: str | None = None
    answers: str | None = None  # a regenerated reply's: the item it answers, where it joins as a new sibling


class SessionKeeper(Protocol):
    """Whoever holds a session in memory (the WebSocket front end's hub), told of its turn's end."""

    def turn_ended(self, started: StartedTurn) -> bool:
        """The engine has finished the turn; whether the session is still in memory (its images still count)."""
        ...

    def persist(self, started: StartedTurn) -> Awaitable[None]:
        """Make the recorded exchange durable (a store write, in order behind the session's others)."""
        ...


class Drain:
    """The server's one drain flag: once on, both front ends refuse new turns (and the WebSocket new connections)."""

    def __init__(self) -> None:
        self.on = False


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
        self._turn_ms = 1000.0  # a moving average of turn durations, for Retry-After
        # Given the count of turns that would wait for a slot, stops as many turns nobody listens to (the hub's
        # detached sessions'), so an attached client is never queued or refused behind abandoned work.
        self.make_room: Callable[[int], int] | None = None
        # Given a session and the image bytes it needs, unloads detached sessions holding images until it has them.
        self.free_images: Callable[[str, int], int] | None = None
        self.tool_syntax = detect(engine.chat_template)  # how this model writes tool calls
        self.grammars = _grammar_pool(engine, settings)
        self._tasks: set[asyncio.Task[None]] = set()  # turns' ends waiting for their store writes

    def close(self) -> None:
        self.grammars.close()
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
                await self.grammars.checked(plan_tools(options.tools, "required", self.tool_syntax).grammar, "tools", quota)

    # ---- a session's turn (WebSocket) -------------------------------------------------------------

    async def start(
        self, session: Session, request: TurnRequest, listener: Listener, quota: CompileQuota, keeper: SessionKeeper
    ) -> StartedTurn:
        """Check, load, plan and submit one turn of `session`. Its end is this service's: the exchange is
        recorded, `keeper` makes it durable, and only then does `listener` hear `Ended`."""
        self.check_open()
        self.check_turn(request)
        await self._compile_grammars(session.defaults, request.options, quota)
        images = await self.attachments.load(request.images, request.image_urls)
        turn = session.check_turn(UserTurn(id=request.id, text=request.text, images=images))
        room = self._image_room(session, turn)
        params, model = self.resolve(session.defaults, request.options)
        tools = self.tools_for(session.defaults, request.options)
        params = tools.params(params)

        async def count(messages: Sequence[ChatMessage]) -> int:
            return await self.engine.count_prompt_tokens(messages, tools=tools.tools)

        with _engine_failures(bool(images)):
            await self.engine.prepare(images)
            window = self.engine.context_tokens
            plan = await session.plan(turn, params.max_tokens, window, count, room, self.settings.trim_headroom)
        self.check_open()  # planning awaited: the server may have begun draining meanwhile
        item_id, reply_id = session.fresh_ids(turn)
        started = StartedTurn(turn, plan, TurnHandle(), session.epoch, model, item_id, reply_id)
        generation = GenerationRequest(
            plan.messages, params, started.handle, adapter=model, affinity=session.id, tools=tools.tools
        )

        self._launch(session, started, generation, tools, listener, keeper)
        return started

    async def regenerate(
        self,
        session: Session,
        request: TurnRequest,
        item_id: str | None,
        listener: Listener,
        quota: CompileQuota,
        keeper: SessionKeeper,
    ) -> StartedTurn:
        """A new reply to what reply `item_id` (default: the last) answers, on the path down to it: its
        prompt is what the old reply's was, so the KV held for it is reused. It joins as the old one's
        sibling when it ends (as a turn's exchange does); a failed one joins nothing."""
        self.check_open()
        self.check_turn(request)
        await self._compile_grammars(session.defaults, request.options, quota)
        answers, messages = session.regenerating(item_id)
        params, model = self.resolve(session.defaults, request.options)
        tools = self.tools_for(session.defaults, request.options)
        params = tools.params(params)
        with _engine_failures(any(m.images for m in messages)):
            prompt_tokens = await self.engine.count_prompt_tokens(messages, tools=tools.tools)
        if prompt_tokens + params.max_tokens > self.engine.context_tokens:  # a regenerate trims nothing: its prompt is fixed
            window = self.engine.context_tokens
            message = f"the path to the reply needs more than the {window}-token context window allows"
            message += f" with max_tokens={params.max_tokens}"
            raise GatewayError(ErrorCode.CONTEXT_OVERFLOW, message)
        self.check_open()
        turn = UserTurn(id=request.id, text="", continues=True)  # it adds no user message
        plan = PromptPlan(messages=messages, prompt_tokens=prompt_tokens, dropped_turns=0)
        _, reply_id = session.fresh_ids(turn)
        started = StartedTurn(turn, plan, TurnHandle(), session.epoch, model, answers, reply_id, answers=answers)
        generation = GenerationRequest(messages, params, started.handle, adapter=model, affinity=session.id, tools=tools.tools)
        self._launch(session, started, generation, tools, listener, keeper)
        return started

    def _launch(
        self,
        session: Session,
        started: StartedTurn,
        generation: GenerationRequest,
        tools: ToolPlan,
        listener: Listener,
        keeper: SessionKeeper,
    ) -> None:
        """Submit a session's planned turn; `accepted` first, its end recorded by `_end`."""

        def end(result: GenerationResult) -> None:
            self._end(session, started, result, listener, keeper)

        plan = started.plan
        self._submit(generation, tools.sink(EventSink(listener, end)))
        session.drop_oldest(plan.dropped_turns)
        self.images.hold(session.id, session.image_bytes + started.turn.image_bytes)
        accepted = Accepted(plan.prompt_tokens, plan.dropped_turns, started.item_id, started.reply_id)
        listener(accepted)  # before any engine event: those come by call_soon

    def _end(
        self, session: Session, started: StartedTurn, result: GenerationResult, listener: Listener, keeper: SessionKeeper
    ) -> None:
        """The turn's end, in one place: recorded at once (a partial reply when cancelled), made durable, then
        `Ended`; which waits for the store no longer than store_timeout_s (a hung store must not hold a reply)."""
        recorded = self.record(session, started, result, held=keeper.turn_ended(started))

        async def deliver() -> None:
            saved = asyncio.ensure_future(keeper.persist(started))
            await asyncio.wait({saved}, timeout=self.settings.store_timeout_s)
            listener(Ended(result, started.reply_id if recorded else None))

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
            ids = (started.item_id, started.reply_id)
            calls = result.tool_calls
            recorded = session.record(started.turn, result.text, cancelled, started.epoch, calls, headroom, ids, started.answers)
        if held:
            self.images.hold(session.id, session.image_bytes)
        return recorded

    def resolve(self, defaults: SamplingOptions, options: SamplingOptions | None) -> tuple[SamplingParams, str | None]:
        params = resolve_params(self.server_defaults, defaults, options, self.settings.max_tokens_limit)
        model = options.model if options is not None and options.model is not None else defaults.model
        return params, self.adapter_for(model)

    def tools_for(self, defaults: SamplingOptions, options: SamplingOptions | None) -> ToolPlan:
        """The turn's tools and tool_choice, each from its options over the session's defaults."""
        tools = options.tools if options is not None and options.tools is not None else defaults.tools
        choice = options.tool_choice if options is not None and options.tool_choice is not None else defaults.tool_choice
        return plan_tools(tools, choice, self.tool_syntax)

    async def _compile_grammars(self, defaults: SamplingOptions, options: SamplingOptions | None, quota: CompileQuota) -> None:
        """The turn's grammars, compiled (or found compiled) on the pool before anything uses them: so
        `resolve` and `tools_for` look them up on the loop, never compile there."""
        if options is not None:
            await self.check_grammars(options, quota)
        fmt = options.response_format if options is not None and options.response_format is not None else defaults.response_format
        with naming("response_format"):
            await self.grammars.response_grammar(fmt, quota)
        with naming("tools"):
            await self.grammars.checked(self.tools_for(defaults, options).grammar, "tools", quota)

    def _image_room(self, session: Session, turn: UserTurn) -> int:
        """How many image bytes this session may hold with the turn: its own bound, and what the other
        sessions leave of the process-wide one."""
        s = self.settings
        if turn.image_bytes > s.max_session_image_bytes:
            message = f"the turn's images are {turn.image_bytes} bytes; a session holds at most {s.max_session_image_bytes}"
            raise GatewayError(ErrorCode.TOO_LARGE, message, field="images")
        wanted = min(s.max_session_image_bytes, session.image_bytes + turn.image_bytes)
        if turn.image_bytes and self.free_images is not None and wanted > self.images.room_for(session.id):
            self.free_images(session.id, wanted)
        room = min(s.max_session_image_bytes, self.images.room_for(session.id))
        if turn.image_bytes > room:
            raise RetryLater(
                ErrorCode.OVERLOADED, "the server holds all the images it can; try again later", self.retry_after_ms()
            )
        return room

    def forget(self, session: Session) -> None:
        """The session is gone from memory: its images no longer count."""
        self.images.release(session.id)

    # ---- a stateless turn (HTTP) ------------------------------------------------------------------

    async def start_conversation(self, request: ConversationRequest, listener: Listener, quota: CompileQuota) -> TurnHandle:
        """Check, load and submit a whole conversation; `listener` hears its events, `Ended` last."""
        self.check_open()
        self.check_conversation(request.messages, request.options)
        options = request.options
        await self._compile_grammars(SamplingOptions(), options, quota)
        tools = self.tools_for(SamplingOptions(), options)
        messages = await self._conversation_messages(request)
        params, model = self.resolve(SamplingOptions(), options)
        with naming("messages"):
            params = await self._fit_context(messages, params, options.max_tokens, tools)
        images = [image for message in messages for image in message.images]
        with _engine_failures(bool(images)):
            await self.engine.prepare(images)
        generation = GenerationRequest(messages=messages, params=tools.params(params), adapter=model, tools=tools.tools)
        self.check_open()
        self._submit(generation, tools.sink(EventSink(listener, lambda result: listener(Ended(result)))))
        return generation.handle

    async def _conversation_messages(self, request: ConversationRequest) -> list[ChatMessage]:
        """Every image fetched and checked on the service's pools (its fetch slots), errors naming their message."""

        async def load(url: str, index: int, field: str) -> ChatImage:
            with naming(field):
                return await self.attachments.load_url(url, index)

        urls = [(url, message.field) for message in request.messages for url in message.image_urls]
        images = iter(await asyncio.gather(*(load(url, i, field) for i, (url, field) in enumerate(urls))))
        return [
            ChatMessage(m.role, m.text, tuple(next(images) for _ in m.image_urls), m.tool_calls, m.tool_call_id)
            for m in request.messages
        ]

    async def _fit_context(
        self, messages: list[ChatMessage], params: SamplingParams, requested: int | None, tools: ToolPlan
    ) -> SamplingParams:
        """max_tokens within what the context window leaves after the prompt; unset, the server's default at most."""
        with _engine_failures(any(m.images for m in messages)):
            prompt_tokens = await self.engine.count_prompt_tokens(messages, tools=tools.tools)
        window = self.engine.context_tokens
        room = window - prompt_tokens
        max_tokens = requested if requested is not None else min(self.settings.default_max_tokens, room)
        if max_tokens > room or max_tokens < 1:
            message = (
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion)."
            )
            raise GatewayError(ErrorCode.CONTEXT_OVERFLOW, message)
        return replace(params, max_tokens=max_tokens)

    # ---- the engine --------------------------------------------------------------------------------

    def _submit(self, request: GenerationRequest, sink: TurnSink) -> None:
        load = self.engine.load()
        waiting = load.active + load.waiting + 1 - load.capacity
        if waiting > 0 and self.make_room is not None:
            self.make_room(waiting)
        try:
            self.engine.submit(request, Observed(sink, self.turn_ended))
        except EngineFull:
            raise RetryLater(
                ErrorCode.OVERLOADED, "the server is at capacity; try again shortly", self.retry_after_ms()
            ) from None
        self.in_flight += 1

    def turn_ended(self, result: GenerationResult) -> None:
        self.in_flight -= 1
        self.metrics.observe_turn(result)
        if result.finish_reason in ("stop", "length"):
            self._turn_ms += 0.2 * (result.total_ms - self._turn_ms)

    def retry_after_ms(self) -> int:
        """When a slot is likely free: the turns ahead, in rounds of the engine's capacity, times the
        recent turn duration; at least 100 ms, at most a minute."""
        load = self.engine.load()
        rounds = math.ceil((load.waiting + 1) / max(1, load.capacity))
        return int(min(60_000, max(100, rounds * self._turn_ms)))


def _grammar_pool(engine: Engine, settings: Settings) -> GrammarPool:
    """With a local engine, its own compile is the check, so each grammar compiles once for both."""
    from gateway.engine.constrain import GrammarVocabulary  # torch: only where a local engine already loaded it

    vocabulary = getattr(engine, "grammars", None)
    if not isinstance(vocabulary, GrammarVocabulary):
        return GrammarPool(settings)
    vocabulary.capacity = settings.grammar_matchers_kept
    return GrammarPool(settings, vocabulary.check, vocabulary.holds)


@contextlib.contextmanager
def _engine_failures(with_images: bool) -> Iterator[None]:
    """An unexpected failure while the engine reads a prompt (another family's image processor, say)
    fails this turn with an `error`, never the connection; the details go to the log only."""
    try:
        yield
    except GatewayError:
        raise
    except Exception:
        log.exception("the engine could not read a prompt")
        if with_images:
            raise GatewayError(ErrorCode.BAD_IMAGE, "the served model could not take this turn's images") from None
        raise GatewayError(ErrorCode.INTERNAL, "the served model could not read this prompt") from None
