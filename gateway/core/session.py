"""One conversation: system prompt, sampling defaults and history, trimmed to fit."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from gateway.core.cadence import Cadence
from gateway.core.conversation import Conversation
from gateway.core.conversation_prompt import split_turns
from gateway.core.conversation_record import ConversationRecord, decode
from gateway.core.exchange import Exchange, PendingTurn, ToolResult, UserTurn
from gateway.core.exchanges import append_exchange, from_exchanges, join_beside, rejoin, to_exchanges
from gateway.core.item_tree import Bounds
from gateway.core.items import Content, Item, Role
from gateway.core.live_timeline import LiveTimeline
from gateway.core.request import SamplingOptions
from gateway.engine.contract import ChatImage, ChatMessage, ToolCall
from gateway.errors import ErrorCode, GatewayError

__all__ = ["Exchange", "PromptPlan", "Session", "ToolResult", "UserTurn"]


@dataclass(frozen=True)
class PromptPlan:
    messages: list[ChatMessage]
    prompt_tokens: int
    dropped_turns: int


TokenCounter = Callable[[Sequence[ChatMessage]], Awaitable[int]]

_OPTION_FIELDS = SamplingOptions.__struct_fields__


@dataclass
class Session:
    """History changes only through these methods; a reply joins it once its stream has ended. The history
    is a conversation tree (gateway/core/conversation.py); `exchanges` is its active path, flat."""

    max_history_turns: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    system: str | None = None
    defaults: SamplingOptions = field(default_factory=SamplingOptions)
    epoch: int = 0  # bumped by reset, so a reply that outlives its conversation is not recorded
    numbered: int = 0  # the last exchange number given out
    max_siblings: int = 8
    # The session's turns trim their images to fit (see `plan`); the tree's own bound is for its branches.
    max_image_bytes: int = sys.maxsize
    conversation: Conversation = field(init=False)
    timeline: LiveTimeline = field(default_factory=LiveTimeline)  # the frames live exchanges' prompts showed
    # The first item a trim ahead keeps (core/warm_ups.py): the next plans drop at least the turns before it, so the
    # prompt it re-prefilled while the engine idled is the one the next turn reads. In memory only.
    trim_ahead: str | None = None
    _trimmed_on: tuple[str, ...] = field(
        init=False, default=()
    )  # the path (item ids) it was fixed on: it holds while the path extends that
    asked_max_tokens: int | None = None  # the last turn's `max_tokens`: the next one's likely (core/warm_ups.py)
    live_cadence: Cadence = field(default_factory=Cadence)  # when its live questions came: the next one's likely time
    _numbers: dict[str, int] = field(init=False, default_factory=dict)  # a reply's item id: its exchange's number

    def __post_init__(self) -> None:
        self.conversation = Conversation(Bounds(self.max_history_turns, self.max_image_bytes, self.max_siblings))

    @property
    def exchanges(self) -> list[Exchange]:
        """The active path as exchanges (a copy: change the history through the methods)."""
        return to_exchanges(self.conversation.path, self._numbers)

    def restore(self, exchanges: Sequence[Exchange]) -> None:
        """Take a flat history (a stored session's from before the tree) as this session's."""
        self.conversation = from_exchanges(exchanges, self.conversation.bounds)
        replies = [item.id for item in self.conversation.path if item.role is Role.ASSISTANT]
        self._numbers = {reply: exchange.number for reply, exchange in zip(replies, exchanges[-len(replies) :])}

    def restore_tree(self, record: ConversationRecord, pending: PendingTurn | None) -> None:
        """Take a stored conversation (every branch) as this session's; `pending`, a turn that was running when
        it was saved, joins where it belongs as a partial exchange with an empty reply (see `rejoin`)."""
        self.conversation = decode(record, self.conversation.bounds)
        if pending is not None:
            rejoin(self.conversation, pending)

    def configure(self, system: str | None, options: SamplingOptions) -> None:
        if system is not None:
            self.system = system or None  # "" clears the system prompt
        changes = {k: getattr(options, k) for k in _OPTION_FIELDS if getattr(options, k) is not None}
        merged = {k: getattr(self.defaults, k) for k in _OPTION_FIELDS} | changes
        self.defaults = SamplingOptions(**merged)

    def reset(self) -> None:
        self.conversation.clear()
        self._numbers.clear()
        self.epoch += 1

    @property
    def image_bytes(self) -> int:
        """Bytes of the images the history holds: what the image bounds limit. Read from the active path's turn
        openers directly (a turn asks this several times; building every exchange each time is not needed)."""
        return sum(_image_bytes(turn) for turn in split_turns(self.conversation.path))

    @property
    def held_image_bytes(self) -> int:
        """Bytes of the images the session holds: the active path's (as `image_bytes`), those that only its
        inactive branches show and the live timeline's frames (what the image ledger counts)."""
        shown = {image.sha256 for item in self.conversation.path for image in item.content.images}
        inactive = sum(n for sha, n in self.conversation.pictures().items() if sha not in shown)
        return self.image_bytes + inactive + self.timeline.nbytes_beyond(shown)

    def make_image_room(self, nbytes: int) -> None:
        """Inactive branches go, least recently active first, until the session holds at most `nbytes` of images:
        before a turn's images make any of the active path's turns go; the live timeline's frames before those."""
        self.timeline.shed(lambda: self.held_image_bytes <= nbytes)
        self._forget_numbers(self.conversation.drop_branches(lambda: self.held_image_bytes <= nbytes))

    async def plan(
        self,
        turn: UserTurn,
        max_tokens: int,
        context_tokens: int,
        count: TokenCounter,
        image_room: int | None = None,
        headroom: float = 0.0,
        timeline: LiveTimeline | None = None,
    ) -> PromptPlan:
        """Messages for the model, dropping the oldest exchanges until the history's images and the
        turn's fit in `image_room` bytes and prompt + max_tokens fits the context window.

        A turn that must drop exchanges drops enough to free `headroom` (a share) of the window, or of
        `image_room`, as well; at most half of the room the history has beside the turn, so a turn never
        clears the history for it. Dropping changes the prompt's opening, so KV held from earlier turns no
        longer applies: without headroom a session at the edge would drop one exchange, and prefill in
        full, on every turn. `timeline`: a fork of the session's, for a plan that must change nothing here (a
        warm-up's: core/warm_ups.py)."""
        turns = split_turns(self.conversation.path)  # as exchanges, but a note or a message alone reads as itself
        timeline = timeline if timeline is not None else self.timeline
        timeline.forget({item.id for item in self.conversation.path})
        budget = context_tokens - max_tokens
        counted: dict[int, int] = {}
        # A turn that continues from tool results keeps the exchange it continues (the question, the calls,
        # the results): without it there is nothing to go on from. Its images were admitted with it.
        most = len(turns) - (1 if turn.continues else 0)

        async def tokens_after_dropping(n: int) -> int:
            if n not in counted:
                counted[n] = await count(self._prompt(turns[n:], turn, timeline))
            return counted[n]

        low = min(max(self._drops_for_images(turns, turn, image_room, headroom), self._dropped_ahead(turns)), most)
        if await tokens_after_dropping(low) > budget:  # the usual case fits at once: one count per turn
            alone = await tokens_after_dropping(most)
            if alone > budget:
                what = "the tool results this turn continues from need" if turn.continues else "this turn alone needs"
                raise GatewayError(
                    ErrorCode.CONTEXT_OVERFLOW,
                    f"{what} more than the {context_tokens}-token context window allows with max_tokens={max_tokens}",
                )
            budget -= _headroom(context_tokens, headroom, budget - alone)
            # Token count only falls as exchanges are dropped, so binary-search the fewest drops.
            low, high = low + 1, most
            while low < high:
                mid = (low + high) // 2
                if await tokens_after_dropping(mid) <= budget:
                    high = mid
                else:
                    low = mid + 1
        messages = self._prompt(turns[low:], turn, timeline)
        return PromptPlan(messages=messages, prompt_tokens=await tokens_after_dropping(low), dropped_turns=low)

    def _drops_for_images(self, turns: list[list[Item]], turn: UserTurn, image_room: int | None, headroom: float) -> int:
        """The fewest oldest turns to drop so that the history's images and the turn's fit (with
        headroom, as for tokens, once any must go)."""
        held = self.held_image_bytes + turn.image_bytes
        if image_room is None or held <= image_room:
            return 0
        room = image_room - _headroom(image_room, headroom, image_room - turn.image_bytes)
        for dropped, items in enumerate(turns):
            if held <= room:
                return dropped
            held -= _image_bytes(items)
        return len(turns)

    def _dropped_ahead(self, turns: list[list[Item]]) -> int:
        """The turns before the one a trim ahead keeps first: none where the path no longer extends the one it was
        fixed on (an edit, a deletion or a switch of branch since: the history it was sized for is not this one)."""
        if self.trim_ahead is None:
            return 0
        path = tuple(item.id for items in turns for item in items)
        if path[: len(self._trimmed_on)] != self._trimmed_on:
            return 0
        return next((n for n, items in enumerate(turns) if items[0].id == self.trim_ahead), 0)

    def trim_ahead_at(self, plan: PromptPlan) -> bool:
        """Make `plan`'s drops (a plan on this session's path, just made) the next plans' least: its first kept turn.
        False where it drops none, or all (nothing of the history would be left to prefill ahead)."""
        turns = split_turns(self.conversation.path)
        if not 0 < plan.dropped_turns < len(turns):
            return False
        self.trim_ahead = turns[plan.dropped_turns][0].id
        self._trimmed_on = tuple(item.id for item in self.conversation.path)
        return True

    def drop_oldest(self, n: int) -> None:
        if n > 0:
            self.trim_ahead = None  # done: it kept the first turn left, or the drops went past it
        self._forget_numbers(self.conversation.drop_turns(n))

    def record(
        self,
        turn: UserTurn,
        reply: str,
        partial: bool,
        epoch: int,
        tool_calls: tuple[ToolCall, ...] = (),
        headroom: float = 0.0,
        item_ids: tuple[str | None, str | None] = (None, None),
        answers: str | None = None,
        edits: str | None = None,
    ) -> bool:
        """Append a finished exchange; False when a reset happened since the turn started. Past
        `max_history_turns`, the oldest go, with `headroom` (a share of the cap, at most half) more, as in
        `plan`: each drop changes the prompt's opening, so one at a time would cost every turn its held KV.
        `item_ids`: the ids `fresh_ids` named for its user message and reply (None: new ones). `answers`: a
        regenerated reply's, the item it answers (see `regenerating`); it joins there, beside the old reply. `edits`:
        an edit's, the user message whose new version (`turn`) joins beside it, answered by the reply."""
        anchor = answers if answers is not None else edits
        if epoch != self.epoch or (anchor is not None and anchor not in self.conversation):
            return False
        self.numbered += 1
        tree = self.conversation
        tree.bounds = replace(tree.bounds, trim_extra=_headroom(self.max_history_turns, headroom, self.max_history_turns - 1))
        held = set(self._numbers)
        if anchor is not None:
            reply_item = join_beside(tree, turn, Content.reply(reply, partial, turn.id), anchor, edits is not None, item_ids)
            for call in tool_calls:
                tree.append(Content.tool_call(call, turn.id))
        else:
            exchange = Exchange(turn=turn, reply=reply, partial=partial, tool_calls=tool_calls)
            reply_item = append_exchange(tree, exchange, *item_ids)
        self._numbers[reply_item.id] = self.numbered
        self._forget_numbers([i for i in held if i not in tree])
        return True

    def regenerating(self, item_id: str | None) -> tuple[str, list[ChatMessage]]:
        """The item a new reply replacing reply `item_id` (default: the active path's last) answers, and the
        prompt for it: the system prompt and the path down to that item. Nothing changes yet."""
        answered = self.conversation.regenerate(item_id)
        return answered.id, self._prompt([self.conversation.path_to(answered.id)], None, self.timeline)

    def editing(self, item_id: str) -> list[ChatMessage]:
        """The prompt before a new version of user message `item_id`: the system prompt and the path above it.
        Nothing changes yet (the new version joins with its reply, in `record`)."""
        return self._prompt([self.conversation.path_to(self.conversation.editing(item_id).parent)], None, self.timeline)

    def edit(self, item_id: str, text: str | None, images: tuple[ChatImage, ...] | None) -> Item:
        """A new version of user message `item_id` (text and images kept where None), with no reply yet."""
        return self.conversation.edit(item_id, text, images)

    def insert(self, after: str | None, content: Content) -> Item:
        """A message, reply or note on the active path right after `after` (None: first); no reply is made."""
        return self.conversation.insert(after, content)

    def delete(self, item_id: str) -> None:
        """Item `item_id` leaves the active path (a reply with its tool calls and results)."""
        self._forget_numbers(self.conversation.delete(item_id))

    def switch(self, item_id: str) -> None:
        """Make the branch through item `item_id` active (below it, the branch seen there most recently)."""
        self.conversation.switch(item_id)

    def truncate(self, item_id: str, chars: int) -> None:
        """Reply `item_id` keeps its first `chars` characters (code points), marked partial: what the client showed."""
        self.conversation.truncate(item_id, chars)

    def adopt(self, tree: Conversation, source: Session) -> None:
        """Hold `tree` (a fork of `source`'s conversation) with `source`'s system prompt and defaults."""
        tree.bounds = self.conversation.bounds
        self.conversation, self.system, self.defaults = tree, source.system, source.defaults
        self.timeline = source.timeline.fork(tree.path)  # the forked path's live exchanges show their frames
        self._numbers = {reply: number for reply, number in source._numbers.items() if reply in tree}
        self.numbered = source.numbered

    def fresh_ids(self, turn: UserTurn) -> tuple[str | None, str]:
        """Ids for `turn`'s user message (None where it adds none) and its reply, before they join."""
        reply_id = self.conversation.fresh_id()
        if turn.continues:
            return None, reply_id
        item_id = self.conversation.fresh_id()
        while item_id == reply_id:
            item_id = self.conversation.fresh_id()
        return item_id, reply_id

    def _forget_numbers(self, removed: Sequence[str]) -> None:
        for item_id in removed:
            self._numbers.pop(item_id, None)

    def add_tool_result(self, call_id: str, content: str) -> None:
        """The client's answer to one of the last reply's calls joins the history as a tool message."""
        last = self.exchanges[-1] if self.exchanges else None
        if last is None or call_id not in last.pending_calls:
            answered = last is not None and any(r.call_id == call_id for r in last.tool_results)
            problem = "was already answered" if answered else "is not a call of the last reply"
            raise GatewayError(ErrorCode.NOT_FOUND, f"tool call {call_id!r} {problem}")
        self.conversation.append(Content.tool_result(call_id, content))

    def check_turn(self, turn: UserTurn) -> UserTurn:
        """A turn may start once every call is answered; an empty one right after results continues from
        them (no user message is added)."""
        last = self.exchanges[-1] if self.exchanges else None
        if last is not None and last.pending_calls:
            raise GatewayError(
                ErrorCode.INVALID_FIELD, f"answer tool calls {', '.join(last.pending_calls)} with tool_result first"
            )
        continues = last is not None and bool(last.tool_results) and not turn.text and not turn.images
        return replace(turn, continues=continues)

    def _prompt(self, turns: Sequence[list[Item]], turn: UserTurn | None, timeline: LiveTimeline) -> list[ChatMessage]:
        """The system prompt, the history's `turns` as the path says them, then `turn`'s message (if any)."""
        return timeline.messages(self.system, [item for items in turns for item in items], turn)


def _image_bytes(turn: list[Item]) -> int:
    """A turn's pictures: its opening message's (a reply that opens one has none)."""
    opener = turn[0].content
    return sum(len(image.data) for image in opener.images) if opener.role is not Role.ASSISTANT else 0


def _headroom(limit: int, share: float, history_room: int) -> int:
    """What trimming frees beyond its need: `share` of the limit, at most half the history's room."""
    return max(0, min(int(limit * share), history_room // 2))
