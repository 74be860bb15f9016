"""Today's flat history (gateway/session.py's exchanges) as a conversation, so a stored session carries over."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.core.conversation import Conversation
from gateway.core.item_tree import Bounds, IdSource, random_id
from gateway.core.items import Content
from gateway.core.session import Exchange


def from_exchanges(exchanges: Iterable[Exchange], bounds: Bounds, new_id: IdSource = random_id) -> Conversation:
    """One branch: each exchange's user message (none where the turn went on from tool results), its
    reply, the reply's calls and their results, in order."""
    tree = Conversation(bounds, new_id)
    for exchange in exchanges:
        turn = exchange.turn
        if not turn.continues:
            tree.append(Content.user(turn.text, turn.images, turn.id))
        tree.append(Content.reply(exchange.reply, exchange.partial, turn.id))
        for call in exchange.tool_calls:
            tree.append(Content.tool_call(call, turn.id))
        for result in exchange.tool_results:
            tree.append(Content.tool_result(result.call_id, result.content))
    return tree
