"""A session's live timeline: the frames each live exchange's prompt showed, kept in memory so later prompts repeat them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.core.conversation_prompt import prompt_messages
from gateway.core.exchange import UserTurn
from gateway.core.items import Item, Role
from gateway.engine.contract import ChatImage, ChatMessage


@dataclass(frozen=True)
class LiveFramesShown:
    """A live turn's window as its prompt lays it out: each frame's marker and image, oldest first, after
    the turn's own `images` and before its `text`; `recorded` is the text its history message holds."""

    markers: tuple[str, ...]
    frames: tuple[ChatImage, ...]
    text: str
    images: tuple[ChatImage, ...]
    recorded: str

    def message(self, shown: set[str]) -> tuple[ChatMessage, LiveFramesShown]:
        """The turn's message showing only the frames not in `shown` (sha256s an earlier message showed), and
        what it showed: the window's KV before them is the earlier exchanges', held from their own turns."""
        new = [(m, f) for m, f in zip(self.markers, self.frames) if f.sha256 not in shown]
        showing = LiveFramesShown(tuple(m for m, _ in new), tuple(f for _, f in new), self.text, self.images, self.recorded)
        return ChatMessage("user", showing.prompted_text, self.images + showing.frames), showing

    @property
    def prompted_text(self) -> str:
        return f"{' '.join(self.markers)}\n{self.text}" if self.markers else self.text


@dataclass
class LiveTimeline:
    """For each live exchange (by its turn's id), the frames its prompt showed, so a later prompt shows them
    where the exchange stands and its own window adds only frames not shown yet: the history's KV, frames
    included, stays a prefix. In memory only (the window is never stored): an exchange it does not know (after
    a restart, or past `max_frames`) reads as its history message, the summary. Past `max_frames` the oldest
    go until half remain, in bulk, so the prompt's opening changes once, not on every turn. Its frames count in
    the session's held images (the image ledger's figure) and are the first to go when a turn needs room."""

    max_frames: int = 64
    _shown: dict[str, LiveFramesShown] = field(default_factory=dict)  # in the order the turns were prompted
    _pending: tuple[str, LiveFramesShown] | None = None  # the live turn being planned (its id), if any

    def begin(self, turn_id: str, live: LiveFramesShown) -> None:
        """A live turn about to be planned: its prompt lays its window out as `live` says (less frames shown).
        Room for its frames is made now, before planning counts any prompt, so every count reads one timeline."""
        self._pending = (turn_id, live)
        if self.frames + len(live.frames) > self.max_frames:
            while self._shown and self.frames + len(live.frames) > self.max_frames // 2:
                del self._shown[next(iter(self._shown))]

    @property
    def frames(self) -> int:
        return sum(len(shown.frames) for shown in self._shown.values())

    @property
    def nbytes(self) -> int:
        return sum(len(image.data) for shown in self._shown.values() for image in shown.frames)

    def __contains__(self, turn_id: str) -> bool:
        return turn_id in self._shown

    def messages(self, system: str | None, path: Sequence[Item], turn: UserTurn | None) -> list[ChatMessage]:
        """The system prompt, `path` as messages (a live exchange known here shows its frames where it stands),
        then `turn`'s message: a live turn's frames not shown above it, then its text."""
        messages = [ChatMessage("system", system)] if system else []
        shown: set[str] = set()
        run: list[Item] = []  # items read as they are: a reply's calls join it, so they go in runs
        for item in path:
            live = self._shown.get(item.content.turn_id or "") if item.role is Role.USER else None
            if live is None or item.content.text != live.recorded:  # an edit of it reads as itself
                run.append(item)
                continue
            messages += prompt_messages(run)
            run = []
            messages.append(ChatMessage("user", live.prompted_text, live.images + live.frames))
            shown.update(frame.sha256 for frame in live.frames)
        return [*messages, *prompt_messages(run), *self._turn_message(turn, shown)]

    def _turn_message(self, turn: UserTurn | None, shown: set[str]) -> list[ChatMessage]:
        if turn is None or turn.continues:
            return []
        if self._pending is None or self._pending[0] != turn.id:
            return [ChatMessage("user", turn.text, turn.images, videos=turn.videos)]
        message, showing = self._pending[1].message(shown)
        self._remember(turn.id, showing)  # the last prompt planned is the one submitted
        return [message]

    def _remember(self, turn_id: str, showing: LiveFramesShown) -> None:
        self._shown.pop(turn_id, None)
        if self.frames + len(showing.frames) <= self.max_frames:  # `begin` made room unless the window alone is over
            self._shown[turn_id] = showing

    def shed(self, enough: Callable[[], bool]) -> None:
        """The oldest exchanges are forgotten until `enough()` (images must make room: these are the first to go)."""
        while self._shown and not enough():
            del self._shown[next(iter(self._shown))]

    def forget(self, keep: set[str]) -> None:
        """Only the exchanges whose turn ids are in `keep` (those on the active path) stay known."""
        for turn_id in [t for t in self._shown if t not in keep]:
            del self._shown[turn_id]
