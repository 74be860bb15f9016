"""The engine's contract with its callers: requests, sampling parameters, events and results."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from gateway.errors import ErrorCode

GREEDY_TEMPERATURE = 1e-5
FinishReason = Literal["stop", "length", "cancelled", "error", "tool_calls"]


@dataclass(frozen=True, eq=False)
class ChatImage:
    """An image as the client sent it: the original bytes and their MIME type, with the size (after
    EXIF orientation) and sha256 read when it was checked. Pixels are derived by whoever needs them."""

    data: bytes
    mime: str  # "image/png", "image/jpeg", "image/webp", "image/gif"
    width: int
    height: int
    sha256: str

    @property
    def format(self) -> str:
        """ "png", "jpeg", ...: the MIME subtype."""
        return self.mime.partition("/")[2]


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made: its id, the function's name, the arguments as JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatVideo:
    """A video as its sampled frames (upright JPEG images), each with its time from the first frame."""

    frames: tuple[ChatImage, ...]
    ts_ms: tuple[int, ...]
    sha256: str  # of the client's bytes

    @property
    def sampled_fps(self) -> float:
        """Frames per second of video, from the frames' times (2 for a single frame: one temporal patch, no
        spacing to time)."""
        if len(self.ts_ms) < 2 or self.ts_ms[-1] <= self.ts_ms[0]:
            return 2.0
        return (len(self.ts_ms) - 1) * 1000 / (self.ts_ms[-1] - self.ts_ms[0])


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    text: str
    images: tuple[ChatImage, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant message's calls
    tool_call_id: str | None = None  # a tool message answers this call
    # Clips the local engine lays out natively where its family reads video (see engine/local/video_prompt.py);
    # they follow the message's images. Front ends send the others' videos as frames among the images.
    videos: tuple[ChatVideo, ...] = ()


@dataclass(frozen=True)
class Grammar:
    """A constraint on a reply's tokens, in llguidance's serialized form (JSON schema, regex or Lark)."""

    kind: Literal["json_object", "json_schema", "regex", "tool_call"]
    source: str  # llguidance's grammar text, checked when the request was validated
    upstream: str = ""  # the same constraint as OpenAI request fields (a JSON object), for an upstream to enforce


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    min_p: float = 0.0  # tokens less likely than min_p times the likeliest are dropped; 0 disables
    max_tokens: int = 512
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep generating past end-of-turn tokens (benchmarks want fixed lengths)
    grammar: Grammar | None = None  # every token is masked to what the grammar allows

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_TEMPERATURE


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: FinishReason
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    ttft_ms: float | None  # from submission (queue wait included) to the first token
    total_ms: float
    tokens_per_s: float  # decode rate: tokens after the first over the time since the first
    error: str | None = None
    cached_tokens: int = 0  # prompt tokens whose KV was reused from an earlier turn, not prefilled
    structured: bool | None = None  # None: no grammar; True: the reply completed it; False: it was cut short
    tool_calls: tuple[ToolCall, ...] = ()  # parsed from the reply (finish_reason "tool_calls"); text is the rest
    error_code: ErrorCode | None = None  # with finish_reason "error": the stable code (None: `generation`)
    retry_after_ms: int | None = None  # with `overloaded`: when the engine is likely to take the turn
    queue_ms: float | None = None  # from submission until a batch slot took it (None: the engine cannot tell)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class TurnSink(Protocol):
    """Receives one turn's events, always on the event loop thread, in order; `done` comes exactly once."""

    def on_queued(self, position: int) -> None: ...

    def on_token(self, text: str) -> None: ...

    def on_done(self, result: GenerationResult) -> None: ...


class ToolCallSink(TurnSink, Protocol):
    """A front end's sink for turns that may call tools: each call arrives before `done`."""

    def on_tool_call(self, call: ToolCall) -> None: ...


@dataclass
class TurnHandle:
    """The caller's grip on a submitted turn: cancel it from any thread; the engine stops at the next token."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    # Set by the engine when the turn leaves its waiting line for the batch: from then on it is not among
    # `EngineLoad.waiting` (an engine that never queues, as the upstream one, sets it at once).
    admitted: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class GenerationRequest:
    messages: Sequence[ChatMessage]
    params: SamplingParams
    handle: TurnHandle = field(default_factory=TurnHandle)
    adapter: str | None = None  # a LoRA adapter's name from Engine.adapters; None is the base model
    affinity: str | None = None  # a session's key: its turns go to the same upstream replica (prefix cache)
    tools: Sequence[dict[str, Any]] = ()  # OpenAI function definitions, for the chat template to render
    traceparent: str | None = None  # W3C trace context of the turn's span: an upstream request carries it on
    # A warm-up (only to an engine that `warms_up`): its prompt is prefilled while the engine has nothing else
    # to do, and its KV held for the turn expected to follow (a live question over the same frames), which
    # then prefills only what differs. Nothing it generates is used; a newer warm-up of the same `affinity`
    # replaces one still waiting.
    warm_up: bool = False


@runtime_checkable
class GrammarCompiler(Protocol):
    """An engine's own grammar compile (its `grammars`, when it has one), lent to the turn service's grammar pool
    as the check, so each grammar compiles once: `check` answers "" when usable, else why not."""

    capacity: int  # compiled grammars kept

    def check(self, source: str, limits: Any) -> str: ...

    def holds(self, source: str) -> bool: ...


class EngineFull(Exception):
    """The engine's bounded queue has no room; the caller answers `overloaded`."""


@dataclass(frozen=True)
class EngineLoad:
    """A snapshot of an engine's occupancy, for metrics and for estimating Retry-After."""

    active: int  # turns generating now
    waiting: int  # turns admitted but waiting for a slot
    capacity: int  # turns that can generate at once
    kv_cache_bytes: int = 0  # finished turns' KV held for reuse on the device
    kv_cache_spilled_bytes: int = 0  # and spilled to pinned host memory (GPU only)
    kv_cache_hits: int = 0  # prefills that started from held KV
    kv_cache_misses: int = 0
    kv_cache_budget: int = 0  # the most held KV may take on the device (0: none is held)
    encoder_cache_bytes: int = 0  # vision-encoder outputs held for images seen before
    encoder_cache_hits: int = 0  # prefills that took images' encoder outputs from those held
    encoder_passes: int = 0  # forward passes of the vision tower so far (images encoded, a prompt's at a time)
    encoder_seconds: float = 0.0  # the engine's time in them so far
    image_cache_bytes: int = 0  # processed images held so a history is not processed again
    kv_spill_budget: int = 0  # and in pinned host memory
    phase_seconds: dict[str, float] = field(default_factory=dict)  # the engine's time so far by phase (its profile)


@dataclass(frozen=True)
class EngineHealth:
    ok: bool
    detail: str = ""  # why not, when not ok


class Engine(Protocol):
    """What the turn service needs from an engine, local or remote. Every method but the async ones
    is called on the event loop thread and must not block it."""

    model_id: str
    vision: bool  # True only when an image prompt was built and run at start-up
    reads_video: bool  # True where a message's `videos` are read as clips; else front ends send frames as images
    warms_up: bool  # True where `submit` takes warm-ups (GenerationRequest.warm_up); else none is sent
    context_tokens: int

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of extra LoRA adapters a request may select (those loaded at run time too)."""
        ...

    chat_template: str | None  # the model's, for reading its tool-call syntax (None: no template)

    @property
    def token_counter(self) -> str:
        """Who counts prompt tokens: "model" (the served model's tokenizer), "upstream" (its /tokenize),
        "tokenizer" (a local tokenizer directory), "estimate" (the scripted engine: words)."""
        ...

    async def count_prompt_tokens(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] = ()) -> int:
        """The prompt's length in tokens, exactly as `submit` would build it; off the event loop."""
        ...

    async def prepare(self, images: Sequence[ChatImage]) -> None:
        """Optional head start on a turn's new images (decode, process) before it is submitted."""
        ...

    def submit(self, request: GenerationRequest, sink: TurnSink) -> TurnHandle: ...

    def limit_image_cache(self, max_bytes: int) -> None:
        """The most bytes the engine's processed images may take from now on (it evicts at once to fit): the
        images sessions hold come first in `max_total_image_bytes`, a cache gets what they leave."""
        ...

    def load(self) -> EngineLoad: ...

    def health(self) -> EngineHealth: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


@runtime_checkable
class EncodesAhead(Protocol):
    """An engine that encodes images on its vision tower ahead of the turn that shows them (the local engine)."""

    def encode_ahead(self, images: Sequence[ChatImage]) -> bool:
        """Encode `images`, processed already (`prepare`), when the engine has nothing else to do, and hold the
        outputs for the turn that shows them (called on the event loop; never blocks it). False: not taken."""
        ...


@runtime_checkable
class AdapterLoader(Protocol):
    """An engine that loads and unloads LoRA adapters while it serves (POST and DELETE /v1/adapters)."""

    def unloading(self, name: str) -> bool:
        """True from an unload's start: new turns naming it are `not_found`, running ones finish."""
        ...

    async def load_adapter(self, name: str, path: str) -> None:
        """Serve the adapter at `path` as model id `name`; a refusal is a GatewayError (`bad_adapter`...)."""
        ...

    async def unload_adapter(self, name: str) -> None:
        """Stop serving `name` at once; return once the turns running on it have finished and it is gone."""
        ...
