"""What a session store keeps and the interface every store implements."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from gateway.core.conversation_record import ConversationRecord
from gateway.core.exchange import PendingTurn
from gateway.core.request import SamplingOptions
from gateway.core.session import Exchange, Session, ToolResult, UserTurn
from gateway.core.store.tree_sync import TreeChange
from gateway.engine.contract import ChatImage, ToolCall


@dataclass
class SessionRecord:
    """A session's durable part: who may resume it, its settings, its history and the turn in progress."""

    id: str
    token_hash: str  # sha256 of the resume token: the token itself is never stored
    owner: str  # a hash of the API key that created it ("" without a key)
    system: str | None = None
    defaults: SamplingOptions = field(default_factory=SamplingOptions)
    exchanges: list[Exchange] = field(default_factory=list)  # a flat history, as stores kept it before the tree
    tree: ConversationRecord | None = None  # the conversation, every branch (a record of before has only `exchanges`)
    pending: PendingTurn | None = None  # a turn that was running when last saved, and where it joins
    last_seq: int = 0
    updated_at: float = 0.0

    def session(self, max_history_turns: int, max_siblings: int = 8) -> Session:
        """The conversation again; a turn that was running when the process died joins as partial, where it
        belongs (a flat history of before the tree has no branches: there, at its end)."""
        if self.tree is not None:
            session = Session(max_history_turns, self.id, self.system, self.defaults, max_siblings=max_siblings)
            session.restore_tree(self.tree, self.pending)
            return session
        exchanges = list(self.exchanges)
        numbered = exchanges[-1].number if exchanges else 0
        if self.pending is not None:
            numbered += 1
            exchanges.append(Exchange(turn=self.pending.turn, reply="", partial=True, number=numbered))
        session = Session(max_history_turns, self.id, self.system, self.defaults, numbered=numbered, max_siblings=max_siblings)
        session.restore(exchanges[-max_history_turns:])
        return session


@dataclass(frozen=True)
class SessionMeta:
    """What a resume is checked against before any history is read: a few bytes, one lookup."""

    id: str
    token_hash: str
    owner: str
    updated_at: float


class SessionStore(Protocol):
    """Every method is a coroutine and does its blocking work off the event loop."""

    persistent: bool  # whether sessions outlive the process here (the memory store's do not)

    async def open(self) -> None:
        """Make sure the store works (its file opens, its server answers); raises when it does not."""
        ...

    async def load_meta(self, session_id: str) -> SessionMeta | None: ...

    async def load(self, session_id: str) -> SessionRecord | None: ...

    async def save_meta(self, record: SessionRecord) -> None:
        """Everything but the history and the pending turn."""
        ...

    async def sync_history(self, session_id: str, exchanges: list[Exchange]) -> None:
        """Make the stored flat history equal `exchanges` (a session's as kept before the tree: sessions keep
        their trees with `sync_tree`, which replaces it)."""
        ...

    async def sync_tree(self, session_id: str, change: TreeChange) -> None:
        """Make the stored conversation tree what `change` says: its head replaced, its items and pictures
        written or deleted; a full change replaces everything stored of the history (a flat one included)."""
        ...

    async def set_pending(self, session_id: str, pending: PendingTurn | None) -> None: ...

    async def delete(self, session_id: str) -> None: ...

    async def purge(self, now: float) -> int:
        """Delete expired sessions and, past the size limit, the least recently used; how many went."""
        ...

    async def claim(self, key: str, now: float, until: float) -> bool:
        """Claim `key` until `until` (unix seconds): True for the first claim, False while an earlier one
        holds, on every process sharing the store (a scoped token's single use)."""
        ...

    async def close(self) -> None: ...


# ---- encoding, shared by the stores ---------------------------------------------------------------

LOW_WATER = 0.75  # past max_store_bytes, the least recently used go until this share of it is left


def decode_record(
    session_id: str,
    meta: tuple[str, str, str | None, bytes, bytes | None, int, float],
    exchanges: Iterable[tuple[int, bytes]],
    tree: ConversationRecord | None = None,
) -> SessionRecord:
    """A record from what a store keeps: (token_hash, owner, system, defaults, pending, last_seq,
    updated_at), and the tree (see `conversation_record.assemble`) or, for a session stored before the
    tree, the encoded exchanges by number, in any order."""
    token_hash, owner, system, defaults, pending, last_seq, updated_at = meta
    return SessionRecord(
        id=session_id,
        token_hash=token_hash,
        owner=owner,
        system=system,
        defaults=decode_options(defaults),
        exchanges=[decode_exchange(blob, number) for number, blob in sorted(exchanges)] if tree is None else [],
        tree=tree,
        pending=decode_pending(pending) if pending else None,
        last_seq=last_seq,
        updated_at=updated_at,
    )


def exchanges_to_write(exchanges: list[Exchange], stored_newest: int | None) -> list[tuple[int, bytes]]:
    """The encoded exchanges a store lacks, and its newest one again (tool results join the newest
    exchange after it was first saved), by number."""
    return [(e.number, encode_exchange(e)) for e in exchanges if stored_newest is None or e.number >= stored_newest]


def encode_turn(turn: UserTurn) -> bytes:
    images = [[i.data, i.mime, i.width, i.height, i.sha256] for i in turn.images]
    return msgspec.msgpack.encode([turn.id, turn.text, images, turn.continues])


def decode_turn(blob: bytes) -> UserTurn:
    turn_id, text, images, continues = msgspec.msgpack.decode(blob)
    return UserTurn(id=turn_id, text=text, images=tuple(ChatImage(*image) for image in images), continues=continues)


def encode_pending(pending: PendingTurn) -> bytes:
    return msgspec.msgpack.encode([encode_turn(pending.turn), pending.answers, pending.edits])


def decode_pending(blob: bytes) -> PendingTurn:
    fields = msgspec.msgpack.decode(blob)
    if not isinstance(fields[0], bytes):  # stored before a pending turn said where it joins: the turn alone
        return PendingTurn(decode_turn(blob))
    turn, answers, edits = fields
    return PendingTurn(decode_turn(turn), answers, edits)


def encode_exchange(exchange: Exchange) -> bytes:
    """Everything of an exchange but its number: the turn, the reply, its tool calls and their results."""
    calls = [[c.id, c.name, c.arguments] for c in exchange.tool_calls]
    results = [[r.call_id, r.content] for r in exchange.tool_results]
    fields = [encode_turn(exchange.turn), exchange.reply, exchange.partial, calls, results, list(exchange.item_ids)]
    return msgspec.msgpack.encode(fields)


def decode_exchange(blob: bytes, number: int) -> Exchange:
    turn, reply, partial, calls, results, *rest = msgspec.msgpack.decode(blob)  # rest: the item ids, where saved
    return Exchange(
        turn=decode_turn(turn),
        reply=reply,
        partial=partial,
        number=number,
        tool_calls=tuple(ToolCall(*c) for c in calls),
        tool_results=tuple(ToolResult(*r) for r in results),
        item_ids=tuple(rest[0]) if rest else (),
    )


def encode_options(options: SamplingOptions) -> bytes:
    return msgspec.msgpack.encode(options)


def decode_options(blob: bytes) -> SamplingOptions:
    return msgspec.msgpack.decode(blob, type=SamplingOptions)


def exchange_bytes(exchange: Exchange) -> int:
    return exchange.turn.image_bytes + len(exchange.turn.text) + len(exchange.reply)
