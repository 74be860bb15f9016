"""The turn service: one lifecycle for every front end, from validation to the recorded exchange."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway import protocol as p
from gateway.config import Settings
from gateway.engine.types import (
    ChatImage,
    ChatMessage,
    Engine,
    EngineFull,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    ToolCallSink,
    TurnHandle,
    TurnSink,
)
from gateway.errors import ErrorCode, GatewayError, RetryLater
from gateway.fetch import data_url_bytes, fetch_image_bytes
from gateway.grammar_pool import CompileQuota, GrammarPool
from gateway.image_ledger import ImageLedger
from gateway.images import ImageLimits, check_image, yield_cpu
from gateway.metrics import Metrics
from gateway.replies import server_defaults
from gateway.session import PromptPlan, Session, UserTurn, resolve_params
from gateway.tools.formats import detect
from gateway.tools.plan import NO_TOOLS, ToolPlan, plan_tools
from gateway.url_guard import FetchPolicy

log = logging.getLogger("gateway.turns")


@dataclass(frozen=True)
class TurnRequest:
    """One user turn as any front end received it."""

    id: str
    text: str
    images: Sequence[bytes] = ()
    image_urls: Sequence[str] = ()
    options: p.SamplingOptions | None = None


@dataclass
class StartedTurn:
    """A session's turn on the engine: what to record when it ends, and the grip to cancel it."""

    turn: UserTurn
    plan: PromptPlan
    handle: TurnHandle
    epoch: int
    model: str | None  # the adapter it runs on; None is the base model


@dataclass
class _Observed:
    """Wraps a front end's sink: the service sees every turn's end (metrics, in-flight count, timing)."""

    sink: TurnSink
    service: TurnService
    handle: TurnHandle

    def on_queued(self, position: int) -> None:
        self.sink.on_queued(position)

    def on_token(self, text: str) -> None:
        self.sink.on_token(text)

    def on_done(self, result: GenerationResult) -> None:
        self.service.turn_ended(result, self.handle)
        self.sink.on_done(result)


class TurnService:
    """Validation and limits, image loading on a bounded pool of its own, sampling resolution, planning
    and trimming, submission, recording, metrics and draining: written once for WebSocket and HTTP."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        if not 0 <= settings.trim_headroom < 1:
            raise ValueError(f"trim_headroom is a share of the context window, at least 0 and below 1: {settings.trim_headroom}")
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.draining = False
        self.in_flight = 0  # turns submitted and not yet done, all front ends together
        self._handles: dict[int, TurnHandle] = {}  # theirs, by id(): a cancelled one frees its slot within a step
        self.server_defaults = server_defaults(settings)
        # One bound for image memory: sessions' images and the engine's processed ones together. The cache
        # always keeps a share (an eighth, at most image_cache_bytes): at 0 a turn's images, processed ahead
        # on the image pool, would be processed again on the generation thread, stalling every turn.
        floor = min(settings.image_cache_bytes, settings.max_total_image_bytes // 8)
        self.images = ImageLedger(settings.max_total_image_bytes - floor, lambda room: engine.limit_image_cache(room + floor))
        engine.limit_image_cache(settings.max_total_image_bytes)
        self.fetch_policy = FetchPolicy.from_settings(settings)
        self._limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        # URL fetches wait on the network and decoding burns CPU: each on a pool of its own, so neither
        # starves the other, and neither shares asyncio's default executor with anything else.
        self._fetch_slots = asyncio.Semaphore(settings.image_fetch_concurrency)
        self._fetch_pool = ThreadPoolExecutor(settings.image_fetch_concurrency, thread_name_prefix="gateway-fetch")
        self._decode_pool = ThreadPoolExecutor(
            max(1, settings.image_workers), thread_name_prefix="gateway-decode", initializer=yield_cpu
        )
        self._turn_ms = 1000.0  # a moving average of turn durations, for Retry-After
        # Given the count of turns that would wait for a slot and of those cancelled (whatever the cause) that
        # free theirs within a step, stops as many turns nobody listens to as the cancelled ones do not cover
        # (the hub's detached sessions'), so an attached client is never queued or refused behind abandoned work.
        self.make_room: Callable[[int, int], int] | None = None
        # Given a session, the image bytes it wants and the least it needs, unloads detached sessions holding
        # images until it has what it wants, and none when even all of them would not give what it needs.
        self.free_images: Callable[[str, int, int], int] | None = None
        self.tool_syntax = detect(engine.chat_template)  # how this model writes tool calls
        self.grammars = _grammar_pool(engine, settings)

    def close(self) -> None:
        self.grammars.close()
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def models(self) -> list[str]:
        return [self.engine.model_id, *self.engine.adapters]

    # ---- checks ----------------------------------------------------------------------------------

    def check_open(self, frame_id: str | None) -> None:
        if self.draining:
            raise GatewayError(ErrorCode.SHUTTING_DOWN, "the server is shutting down; reconnect shortly", frame_id)

    def check_turn(self, request: TurnRequest) -> None:
        self.check_text(request.text, "text")
        self.check_images(len(request.images) + len(request.image_urls))
        if request.options is not None:
            self.check_options(request.options)

    def check_text(self, text: str, what: str) -> None:
        """Client text that joins the history (a turn's, a tool result's) is at most max_text_chars."""
        limit = self.settings.max_text_chars
        if len(text) > limit:
            raise GatewayError(ErrorCode.TOO_LARGE, f"{what} is {len(text)} characters; the limit is {limit}")

    def check_images(self, count: int) -> None:
        if count and not self.engine.vision:
            raise GatewayError(ErrorCode.IMAGES_UNSUPPORTED, "the served model cannot take images; send turns without them")
        if count > self.settings.max_images_per_turn:
            raise GatewayError(ErrorCode.TOO_LARGE, f"{count} images; the limit is {self.settings.max_images_per_turn} per turn")

    def check_options(self, options: p.SamplingOptions) -> None:
        """The limits on sampling options that the schema alone cannot know (they are settings)."""
        limit = self.settings.max_tokens_limit
        if options.max_tokens is not None and options.max_tokens > limit:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"max_tokens {options.max_tokens} is above the limit of {limit}")
        if options.stop is not None and len(options.stop) > self.settings.max_stop_strings:
            raise GatewayError(ErrorCode.TOO_LARGE, f"at most {self.settings.max_stop_strings} stop strings")
        if options.model is not None:
            self.adapter_for(options.model)

    async def check_grammars(self, options: p.SamplingOptions, quota: CompileQuota) -> None:
        """An unusable schema or regex is refused now, and so is an unusable tool parameters schema: each
        compiled on the grammar pool, within the client's compile rate."""
        await self.grammars.response_grammar(options.response_format, quota)
        if options.tools:
            await self.grammars.checked(plan_tools(options.tools, "required", self.tool_syntax).grammar, "tools", quota)

    def adapter_for(self, model: str | None) -> str | None:
        """The adapter a model id selects (None: the base model), or `invalid_field` naming the ids."""
        if model is None or model == self.engine.model_id:
            return None
        if model in self.engine.adapters:
            return model
        raise GatewayError(ErrorCode.INVALID_FIELD, f"unknown model {model[:100]!r}; this server has {', '.join(self.models)}")

    # ---- images ----------------------------------------------------------------------------------

    async def load_images(self, blobs: Sequence[bytes], urls: Sequence[str]) -> tuple[ChatImage, ...]:
        """Attachments, then URL images, checked on the service's pools; numbered in that order."""
        loads = [self.check_blob(blob, i) for i, blob in enumerate(blobs)]
        loads += [self.load_url(url, len(blobs) + i) for i, url in enumerate(urls)]
        results = await asyncio.gather(*loads, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return tuple(results)  # type: ignore[arg-type]

    async def check_blob(self, blob: bytes, index: int) -> ChatImage:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_pool, check_image, blob, self._limits, index)

    async def load_url(self, url: str, index: int) -> ChatImage:
        """A data: URI is decoded here; an http(s) URL waits for one of the fetch slots both front ends share."""
        if url[:5].lower() == "data:":
            return await self.check_blob(data_url_bytes(url, self._limits.max_bytes), index)
        async with self._fetch_slots:
            loop = asyncio.get_running_loop()
            blob = await loop.run_in_executor(self._fetch_pool, fetch_image_bytes, url, self.fetch_policy)
        return await self.check_blob(blob, index)

    # ---- a session's turn (WebSocket) -------------------------------------------------------------

    async def start(self, session: Session, request: TurnRequest, sink: ToolCallSink, quota: CompileQuota) -> StartedTurn:
        """Check, load, plan and submit one turn of `session`; the caller records it with `record`."""
        self.check_open(request.id)
        self.check_turn(request)
        await self._compile_turn_grammars(session.defaults, request.options, quota)
        images = await self.load_images(request.images, request.image_urls)
        turn = session.check_turn(UserTurn(id=request.id, text=request.text, images=images))
        room = self._image_room(session, turn)
        # Reserved before planning awaits, so a turn checked meanwhile sees this one's room as taken; given
        # back if the turn goes no further.
        self.images.hold(session.id, max(session.image_bytes, min(room, session.image_bytes + turn.image_bytes)))
        try:
            started = await self._plan_and_submit(session, request, turn, room, sink)
        except BaseException:
            self.images.hold(session.id, session.image_bytes)
            raise
        self.images.hold(session.id, session.image_bytes + turn.image_bytes)
        return started

    async def _plan_and_submit(
        self, session: Session, request: TurnRequest, turn: UserTurn, room: int, sink: ToolCallSink
    ) -> StartedTurn:
        params, model = self.resolve(session.defaults, request.options)
        tools = self.tools_for(session.defaults, request.options)
        params = tools.params(params)

        async def count(messages: Sequence[ChatMessage]) -> int:
            return await self.engine.count_prompt_tokens(messages, tools=tools.tools)

        with _engine_failures(request.id, bool(turn.images)):
            await self.engine.prepare(turn.images)
            window = self.engine.context_tokens
            plan = await session.plan(turn, params.max_tokens, window, count, room, self.settings.trim_headroom)
        self.check_open(request.id)  # planning awaited: the server may have begun draining meanwhile
        started = StartedTurn(turn=turn, plan=plan, handle=TurnHandle(), epoch=session.epoch, model=model)
        generation = GenerationRequest(
            plan.messages, params, started.handle, adapter=model, affinity=session.id, tools=tools.tools
        )
        self._submit(generation, tools.sink(sink))
        session.drop_oldest(plan.dropped_turns)
        return started

    def record(self, session: Session, started: StartedTurn, result: GenerationResult, held: bool = True) -> bool:
        """The turn's end: its exchange joins the history (partial when cancelled); a failed one does not.
        `held`: the session is still in memory, so its images still count."""
        recorded = False
        if result.finish_reason != "error":
            cancelled = result.finish_reason == "cancelled"
            headroom = self.settings.trim_headroom
            recorded = session.record(started.turn, result.text, cancelled, started.epoch, result.tool_calls, headroom)
        if held:
            self.images.hold(session.id, session.image_bytes)
        return recorded

    def resolve(self, defaults: p.SamplingOptions, options: p.SamplingOptions | None) -> tuple[SamplingParams, str | None]:
        params = resolve_params(self.server_defaults, defaults, options, self.settings.max_tokens_limit)
        model = options.model if options is not None and options.model is not None else defaults.model
        return params, self.adapter_for(model)

    def tools_for(self, defaults: p.SamplingOptions, options: p.SamplingOptions | None) -> ToolPlan:
        """The turn's tools and tool_choice, each from its options over the session's defaults."""
        tools = options.tools if options is not None and options.tools is not None else defaults.tools
        choice = options.tool_choice if options is not None and options.tool_choice is not None else defaults.tool_choice
        return plan_tools(tools, choice, self.tool_syntax)

    async def _compile_turn_grammars(
        self, defaults: p.SamplingOptions, options: p.SamplingOptions | None, quota: CompileQuota
    ) -> None:
        """The turn's grammars, compiled (or found compiled) on the pool before anything uses them: so
        `resolve` and `tools_for` look them up on the loop, never compile there."""
        if options is not None:
            await self.check_grammars(options, quota)
        fmt = options.response_format if options is not None and options.response_format is not None else defaults.response_format
        await self.grammars.response_grammar(fmt, quota)
        await self.grammars.checked(self.tools_for(defaults, options).grammar, "tools", quota)

    def _image_room(self, session: Session, turn: UserTurn) -> int:
        """How many image bytes this session may hold with the turn: its own bound, and what the other
        sessions leave of the process-wide one."""
        s = self.settings
        if turn.image_bytes > s.max_session_image_bytes:
            raise GatewayError(
                ErrorCode.TOO_LARGE,
                f"the turn's images are {turn.image_bytes} bytes; a session holds at most {s.max_session_image_bytes}",
                turn.id,
            )
        wanted = min(s.max_session_image_bytes, session.image_bytes + turn.image_bytes)
        if turn.image_bytes and self.free_images is not None and wanted > self.images.room_for(session.id):
            self.free_images(session.id, wanted, turn.image_bytes)
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

    async def start_stateless(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        model: str | None,
        sink: ToolCallSink,
        tools: ToolPlan = NO_TOOLS,
    ) -> TurnHandle:
        self.check_open(None)
        images = [image for message in messages for image in message.images]
        with _engine_failures(None, bool(images)):
            await self.engine.prepare(images)
        request = GenerationRequest(messages=messages, params=tools.params(params), adapter=model, tools=tools.tools)
        self.check_open(None)
        self._submit(request, tools.sink(sink))
        return request.handle

    async def count(self, messages: Sequence[ChatMessage], tools: ToolPlan = NO_TOOLS) -> int:
        with _engine_failures(None, any(m.images for m in messages)):
            return await self.engine.count_prompt_tokens(messages, tools=tools.tools)

    # ---- the engine --------------------------------------------------------------------------------

    def _submit(self, request: GenerationRequest, sink: TurnSink) -> None:
        load = self.engine.load()
        waiting = load.active + load.waiting + 1 - load.capacity
        if waiting > 0 and self.make_room is not None:
            self.make_room(waiting, sum(handle.cancelled.is_set() for handle in self._handles.values()))
        try:
            self.engine.submit(request, _Observed(sink, self, request.handle))
        except EngineFull:
            raise RetryLater(
                ErrorCode.OVERLOADED, "the server is at capacity; try again shortly", self.retry_after_ms()
            ) from None
        self.in_flight += 1
        self._handles[id(request.handle)] = request.handle

    def turn_ended(self, result: GenerationResult, handle: TurnHandle) -> None:
        self.in_flight -= 1
        self._handles.pop(id(handle), None)
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
def _engine_failures(frame_id: str | None, with_images: bool) -> Iterator[None]:
    """An unexpected failure while the engine reads a prompt (another family's image processor, say)
    fails this turn with an `error`, never the connection; the details go to the log only."""
    try:
        yield
    except GatewayError:
        raise
    except Exception:
        log.exception("the engine could not read a prompt")
        if with_images:
            raise GatewayError(ErrorCode.BAD_IMAGE, "the served model could not take this turn's images", frame_id) from None
        raise GatewayError(ErrorCode.INTERNAL, "the served model could not read this prompt", frame_id) from None
