"""A flat history's parts: a user turn, a tool result, and an exchange (a turn and the reply it got)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.engine.contract import ChatImage, ChatVideo, ToolCall


@dataclass(frozen=True)
class UserTurn:
    id: str
    text: str
    images: tuple[ChatImage, ...] = ()  # the client's bytes; pixels are the engine's business
    continues: bool = False  # an empty turn after tool results: the model goes on from them
    # Clips the prompt reads natively (a live window, where the engine reads video); never recorded.
    videos: tuple[ChatVideo, ...] = ()

    @property
    def image_bytes(self) -> int:
        return sum(len(image.data) for image in self.images) + sum(len(f.data) for v in self.videos for f in v.frames)


@dataclass(frozen=True)
class PendingTurn:
    """A turn running when its session was saved, and where its reply joins: beside the reply it regenerates
    (`answers`, the item that one answers), after the new version of the message it edits (`edits`), or at
    the active path's end (neither)."""

    turn: UserTurn
    answers: str | None = None
    edits: str | None = None


@dataclass(frozen=True, slots=True)  # a session may hold thousands
class ToolResult:
    """The client's answer to one of the reply's tool calls, matched by the call's id."""

    call_id: str
    content: str


@dataclass(frozen=True)
class Exchange:
    """A user turn and the reply it got; `partial` marks a reply cut short by cancel. A reply that called
    tools holds its calls, and the client's results join it as they arrive."""

    turn: UserTurn
    reply: str
    partial: bool = False
    number: int = 0  # 1, 2, 3, ... in the order exchanges joined this session; never reused
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    # Its items' ids in the conversation (message, reply, calls, results), kept by the stores; () for new ones.
    item_ids: tuple[str, ...] = field(default=(), compare=False)

    @property
    def pending_calls(self) -> list[str]:
        """Ids of calls the client has not answered yet."""
        answered = {r.call_id for r in self.tool_results}
        return [c.id for c in self.tool_calls if c.id not in answered]
