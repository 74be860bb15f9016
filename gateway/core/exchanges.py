"""A flat history (exchanges) as a conversation tree and back: stored sessions carry over, old views stay."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gateway.core.conversation import Conversation
from gateway.core.conversation_prompt import split_turns
from gateway.core.exchange import Exchange, PendingTurn, ToolResult, UserTurn
from gateway.core.item_tree import Bounds, IdSource, random_id
from gateway.core.items import Content, Item, Role


def from_exchanges(exchanges: Iterable[Exchange], bounds: Bounds, new_id: IdSource = random_id) -> Conversation:
    """One branch: each exchange's user message (none where the turn went on from tool results), its
    reply, the reply's calls and their results, in order."""
    tree = Conversation(bounds, new_id)
    for exchange in exchanges:
        append_exchange(tree, exchange)
    return tree


def append_exchange(tree: Conversation, exchange: Exchange, user_id: str | None = None, reply_id: str | None = None) -> Item:
    """The exchange's items at the end of the active path, with the ids it holds (or the message's and the
    reply's given here; new ones where neither says); the reply item."""
    turn = exchange.turn
    contents = [] if turn.continues else [Content.user(turn.text, turn.images, turn.id)]
    contents.append(Content.reply(exchange.reply, exchange.partial, turn.id))
    contents += [Content.tool_call(call, turn.id) for call in exchange.tool_calls]
    contents += [Content.tool_result(result.call_id, result.content) for result in exchange.tool_results]
    ids: list[str | None] = [*exchange.item_ids] if len(exchange.item_ids) == len(contents) else [None] * len(contents)
    if not exchange.item_ids:
        ids[: 2 - turn.continues] = [user_id, reply_id][turn.continues :]
    items = [tree.append(content, item_id) for content, item_id in zip(contents, ids)]
    return items[1 - turn.continues]


def to_exchanges(path: Sequence[Item], numbers: Mapping[str, int]) -> list[Exchange]:
    """The path as exchanges, one per turn, each numbered as `numbers` says for its reply's id (0 where
    it says nothing). A turn with no reply (a message inserted on its own) has an empty one; a note
    reads as a user message, which only an exchange can hold."""
    return [_exchange(turn, numbers) for turn in split_turns(path)]


def _exchange(turn: list[Item], numbers: Mapping[str, int]) -> Exchange:
    opener = turn[0].content
    reply = next((item for item in turn if item.role is Role.ASSISTANT), None)
    if opener.role is Role.ASSISTANT:
        user = UserTurn(id=opener.turn_id or "", text="", continues=True)
    else:
        user = UserTurn(id=opener.turn_id or "", text=opener.text, images=opener.images)
    calls = tuple(i.content.call for i in turn if i.content.call is not None)
    results = tuple(ToolResult(i.content.call_id, i.content.text) for i in turn if i.content.call_id is not None)
    return Exchange(
        turn=user,
        reply=reply.content.text if reply is not None else "",
        partial=reply.content.partial if reply is not None else False,
        number=numbers.get(reply.id, 0) if reply is not None else 0,
        tool_calls=calls,
        tool_results=results,
        item_ids=tuple(item.id for item in turn),
    )


Ids = tuple[str | None, str | None]  # a user message's and its reply's (None: new ones)


def join_beside(tree: Conversation, turn: UserTurn, reply: Content, anchor: str, edits: bool, ids: Ids = (None, None)) -> Item:
    """`reply` as a new child of `anchor`, the item a regenerated reply answers, or (`edits`) `turn` as the new
    version of user message `anchor`, answered by `reply`; with the ids given (None: new ones); the reply item."""
    if edits:
        anchor = tree.edit(anchor, turn.text, turn.images, turn.id, ids[0]).id
    return tree.attach(anchor, reply, ids[1])


def rejoin(tree: Conversation, pending: PendingTurn) -> Item:
    """A turn that was running at a crash, as a partial exchange with an empty reply where it belongs (see
    `PendingTurn`); at the active path's end where the item it was placed by is gone."""
    turn = pending.turn
    anchor = pending.answers if pending.answers is not None else pending.edits
    if anchor is None or anchor not in tree:
        return append_exchange(tree, Exchange(turn=turn, reply="", partial=True))
    return join_beside(tree, turn, Content.reply("", True, turn.id), anchor, pending.edits is not None)
