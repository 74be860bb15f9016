"""The wire's client frames: what a client may send, typed as msgspec structs (decoding is protocol.py's)."""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from msgspec import Meta, Struct

from gateway.core.request import MaxTokens, SamplingOptions
from gateway.ws.frames import TurnId

# ---- client to server -------------------------------------------------------------------------


class _ClientFrame(Struct, forbid_unknown_fields=True, tag_field="type"):
    """Base of every client frame: a map whose `type` field names the frame."""


ImageUrl = Annotated[str, Meta(min_length=1, max_length=4096)]


SourceName = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]


class LiveSpec(Struct, forbid_unknown_fields=True):
    """Which live window a turn reads: a source (the one streaming, when the session streams one) and how many
    of its latest frames (all it holds when unset)."""

    source: SourceName | None = None
    frames: Annotated[int, Meta(ge=1)] | None = None


class TurnFrame(_ClientFrame, tag="turn"):
    id: TurnId
    text: str = ""
    images: list[bytes] = []
    image_urls: list[ImageUrl] = []  # fetched by the server behind its SSRF guard, after `images`
    options: SamplingOptions | None = None
    videos: list[bytes] = []  # MP4, WebM or GIF; each sampled into frames that follow the images
    live: bool | LiveSpec = False  # answered over a live window's frames (true: the session's one source, all)


ItemId = Annotated[str, Meta(min_length=1, max_length=64)]


class RegenerateFrame(_ClientFrame, tag="regenerate"):
    """A new reply in place of reply `item_id` (default: the last); the old one stays as its sibling."""

    id: TurnId
    item_id: ItemId | None = None
    options: SamplingOptions | None = None


class EditFrame(_ClientFrame, tag="edit"):
    """A new version of user message `item_id` (text and images kept where null); with `respond`, answered like a
    turn, else by `history`."""

    item_id: ItemId
    id: TurnId | None = None  # required with `respond`: the turn's id
    text: str | None = None
    images: list[bytes] | None = None
    respond: bool = True
    options: SamplingOptions | None = None


class InsertFrame(_ClientFrame, tag="insert"):
    """A message, reply or note on the active path right after `after` (null: first); answered by `history`."""

    after: ItemId | None
    role: Literal["user", "assistant", "note"]
    text: str
    images: list[bytes] = []
    id: TurnId | None = None


class _OnItem(_ClientFrame):
    """A change to one item, named by `item_id`; `id` names the answer, as a turn's does."""

    item_id: ItemId
    id: TurnId | None = None


class DeleteFrame(_OnItem, tag="delete"):
    """Item `item_id` leaves the active path (a reply with its tool calls and results); answered by `history`."""


class TruncateFrame(_ClientFrame, tag="truncate"):
    """Reply `item_id` keeps its first `chars` characters (what the client showed); answered by `history`."""

    item_id: ItemId
    chars: Annotated[int, Meta(ge=0)]
    id: TurnId | None = None


class ForkFrame(_ClientFrame, tag="fork"):
    """A new session holding the path to `item_id` (default: the active path); answered by `forked`."""

    item_id: ItemId | None = None
    id: TurnId | None = None


class SwitchFrame(_OnItem, tag="switch"):
    """Make the branch through `item_id` active; answered by `history`."""


class CancelFrame(_ClientFrame, tag="cancel"):
    id: TurnId


class ResetFrame(_ClientFrame, tag="reset"):
    id: TurnId | None = None


class ConfigureFrame(_ClientFrame, SamplingOptions, tag="configure"):
    """Session defaults: every sampling option, flat in the frame, plus the system prompt."""

    id: TurnId | None = None
    system: Annotated[str, Meta(max_length=32_000)] | None = None


class HistoryRequestFrame(_ClientFrame, tag="history"):
    id: TurnId | None = None
    include_images: bool = False


class PingFrame(_ClientFrame, tag="ping"):
    id: TurnId | None = None


SessionId = Annotated[str, Meta(min_length=1, max_length=64)]
ResumeToken = Annotated[str, Meta(min_length=1, max_length=256)]


class ResumeFrame(_ClientFrame, tag="resume"):
    """Take up an earlier session (before this connection's first turn): its history, its running turn
    and every frame after `last_seq` that the server still holds."""

    session: SessionId
    token: ResumeToken
    last_seq: Annotated[int, Meta(ge=0)] = 0
    id: TurnId | None = None


class ForgetFrame(_ClientFrame, tag="forget"):
    """Delete this session and everything stored for it; the connection goes on with a fresh one."""

    id: TurnId | None = None


class LiveImageFrame(_ClientFrame, tag="frame"):
    """A camera's or a screen's frame for the session's live window of `source`: no reply, errors only."""

    source: SourceName
    image: bytes
    ts: Annotated[int, Meta(ge=0)]  # the client's time in ms
    id: TurnId | None = None


class WatchFrame(_ClientFrame, tag="watch"):
    """Have the server ask `text` about `source`'s live window every `every_s` while new frames arrive."""

    source: SourceName
    every_s: Annotated[float, Meta(gt=0)]
    text: str
    max_tokens: MaxTokens | None = None
    id: TurnId | None = None


class UnwatchFrame(_ClientFrame, tag="unwatch"):
    id: TurnId | None = None


class ToolResultFrame(_ClientFrame, tag="tool_result"):
    """The client's answer to a `tool_call`; it joins the history as a tool message."""

    call_id: Annotated[str, Meta(min_length=1, max_length=64)]
    content: Annotated[str, Meta(max_length=256_000)]
    id: TurnId | None = None


ClientFrame = Union[
    TurnFrame,
    CancelFrame,
    ResetFrame,
    ConfigureFrame,
    HistoryRequestFrame,
    PingFrame,
    ResumeFrame,
    ForgetFrame,
    ToolResultFrame,
    LiveImageFrame,
    WatchFrame,
    UnwatchFrame,
    RegenerateFrame,
    SwitchFrame,
    TruncateFrame,
    ForkFrame,
    EditFrame,
    InsertFrame,
    DeleteFrame,
]
CLIENT_TYPES: tuple[str, ...] = tuple(str(t.__struct_config__.tag) for t in get_args(ClientFrame))
