"""A session's live timeline: the frames (or clips) each exchange's prompt showed, kept in memory so later prompts repeat them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from gateway.core.conversation_prompt import prompt_messages
from gateway.core.exchange import UserTurn
from gateway.core.items import Item, Role
from gateway.core.video_frames import only_frames
from gateway.engine.contract import ChatImage, ChatMessage, ChatVideo


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


@dataclass(frozen=True)
class ClipsShown:
    """A turn whose videos its prompt read as clips (an engine that reads video natively), while its history message
    holds their frames as images named in its text (`recorded`), or a live turn's window read as one clip, while its
    history message holds the summary: a later prompt shows the clips again, so the exchange's KV stays a prefix.
    A turn's own videos' frames are the history message's images, counted there; a window's are held here."""

    text: str
    images: tuple[ChatImage, ...]
    videos: tuple[ChatVideo, ...]
    recorded: str
    frames: tuple[ChatImage, ...] = ()  # held beyond the history's: a live window's clip's, else none

    def message(self, shown: set[str]) -> tuple[ChatMessage, ClipsShown]:
        """The turn's message; a live window's clip holds only the frames not in `shown` (sha256s an earlier
        message showed: their KV is the earlier exchanges'), as a clip of its own timed from its first frame, or
        none when every frame was shown. A turn's own videos read as they are."""
        if self.frames:
            (clip,) = self.videos
            frames = tuple(frame for frame in clip.frames if frame.sha256 not in shown)
            if len(frames) < len(clip.frames):
                videos = (only_frames(clip, frames),) if frames else ()
                return ChatMessage("user", self.text, self.images, videos=videos), replace(self, videos=videos, frames=frames)
        return ChatMessage("user", self.text, self.images, videos=self.videos), self


Shown = LiveFramesShown | ClipsShown


@dataclass
class LiveTimeline:
    """For each live exchange (by its message's item id), the frames its prompt showed, so a later prompt shows
    them where the exchange stands and its own window adds only frames not shown yet: the history's KV, frames
    included, stays a prefix. Likewise the clips of a turn whose videos were read natively (ClipsShown).
    In memory only (the window is never stored): an exchange it does not know (after
    a restart, or past `max_frames`) reads as its history message, the summary. Past `max_frames` the oldest
    go until half remain, in bulk, so the prompt's opening changes once, not on every turn. Its frames count in
    the session's held images (the image ledger's figure) and are the first to go when a turn needs room."""

    max_frames: int = 64
    # Item id: the turn's id and what its prompt showed, in the order the exchanges joined.
    _shown: dict[str, tuple[str, Shown]] = field(default_factory=dict)
    # The last live turn prompted (its turn id), until its message is found on the path: it has no item id before.
    _fresh: tuple[str, Shown] | None = None
    _pending: tuple[str, Shown] | None = None  # the live turn being planned (its id), if any

    def begin(self, turn_id: str, live: Shown | None) -> tuple[ChatImage, ...]:
        """A turn about to be planned: a live one's prompt lays its window out as `live` says (less frames shown),
        any other's (None) reads as itself. Room for the frames is made now, before planning counts any prompt,
        so every count reads one timeline. Returns the window's frames not held here: what the turn adds to the
        session's images (the others count already, as the timeline's)."""
        self._pending = (turn_id, live) if live is not None else None
        if live is None:
            return ()
        if self.frames + len(live.frames) > self.max_frames:
            self.shed(lambda: self.frames + len(live.frames) <= self.max_frames // 2)
        held = {frame.sha256 for shown in self._entries() for frame in shown.frames}
        return tuple(frame for frame in live.frames if frame.sha256 not in held)

    def _entries(self) -> list[Shown]:
        return [shown for _, shown in self._shown.values()] + ([self._fresh[1]] if self._fresh is not None else [])

    @property
    def frames(self) -> int:
        return sum(len(shown.frames) for shown in self._entries())

    def nbytes_beyond(self, held: set[str]) -> int:
        """Bytes of the frames held here that are not among `held` (sha256s of images the history holds: a
        frame kept as a live exchange's last one counts once)."""
        frames = {image.sha256: len(image.data) for shown in self._entries() for image in shown.frames}
        return sum(n for sha, n in frames.items() if sha not in held)

    def __contains__(self, turn_id: str) -> bool:
        return any(turn == turn_id for turn, _ in [*self._shown.values(), *([self._fresh] if self._fresh else [])])

    def messages(self, system: str | None, path: Sequence[Item], turn: UserTurn | None) -> list[ChatMessage]:
        """The system prompt, `path` as messages (a live exchange known here shows its frames where it stands),
        then `turn`'s message: a live turn's frames not shown above it, then its text."""
        messages = [ChatMessage("system", system)] if system else []
        shown: set[str] = set()
        run: list[Item] = []  # items read as they are: a reply's calls join it, so they go in runs
        for item in path:
            live = self._known(item) if item.role is Role.USER else None
            if live is None:
                run.append(item)
                continue
            messages += prompt_messages(run)
            run = []
            messages.append(live.message(set())[0])
            shown.update(frame.sha256 for frame in live.frames)
        return [*messages, *prompt_messages(run), *self._turn_message(turn, shown)]

    def _known(self, item: Item) -> Shown | None:
        """What user message `item`'s prompt showed, if known and the message is as recorded (an edit reads as
        itself); the last live turn's layout is bound to its message's item id when first found."""
        fresh = self._fresh
        if item.id not in self._shown and fresh is not None and fresh[0] == item.content.turn_id:
            if item.content.text == fresh[1].recorded:
                self._shown[item.id], self._fresh = fresh, None
        known = self._shown.get(item.id)
        return known[1] if known is not None and item.content.text == known[1].recorded else None

    def _turn_message(self, turn: UserTurn | None, shown: set[str]) -> list[ChatMessage]:
        if turn is None or turn.continues:
            return []
        if self._pending is None or self._pending[0] != turn.id:
            return [ChatMessage("user", turn.text, turn.images, videos=turn.videos)]
        message, showing = self._pending[1].message(shown)
        # The last prompt planned is the one submitted; `begin` made room unless the window alone is over.
        self._fresh = None  # an earlier planning's layout of this turn (any earlier turn's was bound above, or failed)
        self._fresh = (turn.id, showing) if self.frames + len(showing.frames) <= self.max_frames else None
        return [message]

    def shed(self, enough: Callable[[], bool]) -> None:
        """The oldest exchanges are forgotten until `enough()` (images must make room: these are the first to go)."""
        while self._shown and not enough():
            del self._shown[next(iter(self._shown))]
        if not enough():
            self._fresh = None

    def fork(self, path: Sequence[Item]) -> LiveTimeline:
        """A timeline for a fork holding `path` (the same item ids): the exchanges on it that this one knows."""
        for item in path:  # the last live turn's layout is bound to its message here, if not yet
            if item.role is Role.USER:
                self._known(item)
        ids = {item.id for item in path}
        return LiveTimeline(self.max_frames, {i: known for i, known in self._shown.items() if i in ids})

    def forget(self, keep: set[str]) -> None:
        """Only the exchanges whose messages' item ids are in `keep` (those on the active path) stay known."""
        for item_id in [i for i in self._shown if i not in keep]:
            del self._shown[item_id]
