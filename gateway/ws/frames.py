"""The wire's server frames (and the base every frame shares): what the gateway sends, typed as msgspec structs."""

from __future__ import annotations

import builtins
from typing import Annotated, Any, Literal, Union

from msgspec import Meta, Struct

from gateway.engine.contract import FinishReason

PROTOCOL_VERSION = 2

TurnId = Annotated[str, Meta(min_length=1, max_length=64)]


class Frame(Struct, forbid_unknown_fields=True, tag_field="type"):
    """Base of every frame: a map whose `type` field names the frame."""


# ---- server to client -------------------------------------------------------------------------


class ServerBase(Frame, kw_only=True):
    """Base of every server frame: `seq` numbers a session's frames 1, 2, 3, ... across reconnects."""

    seq: int | None = None  # set when the frame joins its session's journal; `resumed` has none


class ReadyFrame(ServerBase, tag="ready"):
    session: str
    model: str
    protocol: int
    limits: dict[str, int | float]  # ints, but for `video_fps`
    defaults: dict[str, Any]
    vision: bool
    models: list[str] = []  # every id `model` may name: the base model, then each adapter
    demo: bool = False  # the built-in demo model: random weights, so random replies
    resume_token: str = ""  # the secret that resumes this session from another connection
    token_counter: str = ""  # who counts prompt tokens for trimming: model, upstream, tokenizer, estimate
    durable: bool = False  # sessions are kept in a store that works now, so they outlive a restart


class ResumedFrame(Frame, tag="resumed"):
    """The answer to `resume`; `replayed` frames with their original `seq` follow, then live ones."""

    session: str
    last_seq: int  # the server's latest seq for this session
    replayed: int
    gap: bool  # frames after the client's last_seq are no longer held: ask for `history`
    id: str | None = None


class ForgottenFrame(ServerBase, tag="forgotten"):
    session: str  # the fresh session the connection now has
    resume_token: str  # and its resume token
    id: str | None = None


class LiveFramesInfo(Struct):
    """The live frames a turn's prompt reads: how many, the first's and the last's client times (ms), the
    near-duplicates merged into them, and whether the latest was seen again since it came (a still scene)."""

    count: int
    first_ts: int
    last_ts: int
    merged: int = 0
    still: bool = False


class ForkedFrame(ServerBase, tag="forked"):
    session: str  # the new session, holding the path forked
    resume_token: str  # and its resume token: `resume` takes it up
    id: str | None = None


class AcceptedFrame(ServerBase, tag="accepted"):
    id: str
    prompt_tokens: int
    dropped_turns: int = 0
    live_frames: LiveFramesInfo | None = None  # set on a live turn
    initiated: str | None = None  # "watch": a turn the server started for the session's watch
    item_id: str | None = None  # the user message's item (None: a turn going on from tool results)
    reply_id: str | None = None  # the reply's item, once it joins


class QueuedFrame(ServerBase, tag="queued"):
    id: str
    position: int  # 1 = next to start


class TokenFrame(ServerBase, tag="token"):
    id: str
    text: str


class ToolCallFrame(ServerBase, tag="tool_call"):
    """A function call in the reply, whole; `done` (finish_reason `tool_calls`) follows the last one."""

    id: str
    call_id: str
    name: str
    arguments: str  # a JSON object, as text


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV was held from an earlier turn, not computed again


class Timing(Struct):
    ttft_ms: float | None  # None when no token was produced
    total_ms: float
    tokens_per_s: float


class DoneFrame(ServerBase, tag="done"):
    id: str
    finish_reason: FinishReason
    text: str
    usage: Usage
    timing: Timing
    structured: bool | None = None  # with a response_format or a forced tool call: did the reply complete it
    initiated: str | None = None  # "watch": a turn the server started for the session's watch
    reply_id: str | None = None  # the item the reply joined the history as (None: it joined nothing)


class ErrorFrame(ServerBase, tag="error"):
    code: str
    message: str
    id: str | None = None
    retry_after_ms: int | None = None  # set with `rate_limited`, `overloaded`, `shutting_down`


class ClosingFrame(Frame, tag="closing", omit_defaults=True):  # `grace_ms` only where set
    """The last frame before the server closes the connection, saying why."""

    code: int
    reason: str
    grace_ms: int | None = None  # set on the notice ahead of a close: how long until it comes (a token's end)


class ImageInfo(Struct):
    format: str
    width: int
    height: int
    bytes: int
    sha256: str
    data: builtins.bytes | None = None  # `bytes` is shadowed by the field above


class ToolCallInfo(Struct):
    call_id: str
    name: str
    arguments: str
    item_id: str | None = None  # the call's own item


class HistoryEntry(Struct):
    role: Literal["user", "assistant", "tool", "note"]
    text: str
    id: str | None = None
    images: list[ImageInfo] = []
    partial: bool = False
    tool_calls: list[ToolCallInfo] = []  # an assistant entry's calls
    call_id: str | None = None  # the call a tool entry answers
    item_id: str | None = None  # the item's id in the conversation (a tool entry's: its result's)
    siblings: int = 1  # items with the same parent, itself included (versions of a message or reply)
    index: int = 0  # its place among them, 0 for the oldest
    sibling_ids: list[str] = []  # their ids in `index` order: what `switch` takes to flip between them


class HistoryFrame(ServerBase, tag="history"):
    system: str | None
    turns: list[HistoryEntry]
    id: str | None = None


class ConfiguredFrame(ServerBase, tag="configured"):
    defaults: dict[str, Any]
    id: str | None = None


class ResetDoneFrame(ServerBase, tag="reset"):
    id: str | None = None


class PongFrame(ServerBase, tag="pong"):
    id: str | None = None


# Every server frame but `resumed` and `closing` (both about the connection) is numbered in its session.
SessionFrame = Union[
    ReadyFrame,
    ForgottenFrame,
    ForkedFrame,
    AcceptedFrame,
    QueuedFrame,
    TokenFrame,
    ToolCallFrame,
    DoneFrame,
    ErrorFrame,
    HistoryFrame,
    ConfiguredFrame,
    ResetDoneFrame,
    PongFrame,
]

ServerFrame = Union[SessionFrame, ResumedFrame, ClosingFrame]  # typing flattens it: one tagged union

# msgpack-python refuses these before any object is built: ext types (timestamps too) are never
# part of the protocol, and no legitimate frame nests deeper or wider than this.
