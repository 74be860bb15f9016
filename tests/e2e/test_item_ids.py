"""Item ids on the wire: `accepted` names a turn's items, `done` confirms the reply's, `history` shows them placed."""

from __future__ import annotations

import msgspec

from gateway.client import GatewayClient
from gateway.core.session import Session, UserTurn
from gateway.core.store.base import decode_exchange, encode_exchange, encode_turn
from gateway.engine.contract import ToolCall
from gateway.ws import protocol as p
from gateway.ws.replies import history_frame
from tests.conftest import RunningServer
from tests.e2e.waits import next_of

GREEDY = {"temperature": 0}


async def test_accepted_done_and_history_carry_the_same_item_ids(server: RunningServer) -> None:
    """The ids `accepted` names are the ids `done` and `history` give the turn's message and reply."""
    async with GatewayClient(server.ws_url) as client:
        first = await client.turn("t1", "hello", max_tokens=3, **GREEDY)
        second = await client.turn("t2", "again", max_tokens=3, **GREEDY)
        history = await client.request({"type": "history"})
    assert first.accepted and first.done and second.accepted and second.done
    named = [first.accepted["item_id"], first.accepted["reply_id"], second.accepted["item_id"], second.accepted["reply_id"]]
    assert len(set(named)) == 4 and all(isinstance(i, str) and len(i) == 8 for i in named)
    assert first.done["reply_id"] == first.accepted["reply_id"] and second.done["reply_id"] == second.accepted["reply_id"]
    assert [t["item_id"] for t in history["turns"]] == named
    assert all(t["siblings"] == 1 and t["index"] == 0 for t in history["turns"])


async def test_a_turn_cut_by_reset_names_no_reply_in_done(server: RunningServer) -> None:
    """A reply that joins nothing (the session was reset while it ran) has `done.reply_id` null."""
    async with GatewayClient(server.ws_url) as client:
        await client.send(
            {"type": "turn", "id": "long", "text": "tell me a story", "options": {"max_tokens": 200, "ignore_eos": True}}
        )
        await next_of(client.recv, "accepted")
        await client.send({"type": "reset", "id": "r"})
        done = await next_of(client.recv, "done")
        history = await client.request({"type": "history"})
    assert done["finish_reason"] == "cancelled" and done["reply_id"] is None
    assert history["turns"] == []


def test_history_entries_follow_the_tree() -> None:
    """A reply's calls carry their items' ids and a tool entry its result's, with its turn's id."""
    session = Session(max_history_turns=10)
    call = ToolCall("c1", "look", "{}")
    session.record(UserTurn(id="t1", text="weather?"), "let me look", False, session.epoch, (call,), 0.0, ("u1", "r1"))
    session.add_tool_result("c1", "rain")
    entries = history_frame(session, p.HistoryRequestFrame()).turns
    path = session.conversation.path
    assert [(e.role, e.id, e.item_id) for e in entries] == [
        ("user", "t1", "u1"),
        ("assistant", "t1", "r1"),
        ("tool", "t1", path[3].id),
    ]
    assert entries[1].tool_calls[0].item_id == path[2].id and entries[2].call_id == "c1"


def test_a_stored_history_keeps_its_item_ids() -> None:
    """Exchanges written by a store and read back give the session the same items, ids and all."""
    session = Session(max_history_turns=10)
    call = ToolCall("c1", "look", "{}")
    session.record(UserTurn(id="t1", text="weather?"), "let me look", False, session.epoch, (call,))
    session.add_tool_result("c1", "rain")
    session.record(session.check_turn(UserTurn(id="t2", text="")), "rain it is", False, session.epoch)
    stored = [decode_exchange(encode_exchange(e), e.number) for e in session.exchanges]
    again = Session(max_history_turns=10)
    again.restore(stored)
    assert [i.id for i in again.conversation.path] == [i.id for i in session.conversation.path]
    assert again.exchanges == session.exchanges


def test_an_exchange_stored_before_item_ids_loads_with_new_ones() -> None:
    """A blob written before exchanges carried item ids decodes, and its items get fresh ids."""
    old = msgspec.msgpack.encode([encode_turn(UserTurn(id="t1", text="hi")), "hello", False, [], []])
    session = Session(max_history_turns=10)
    session.restore([decode_exchange(old, 1)])
    assert [e.reply for e in session.exchanges] == ["hello"] and len(session.conversation) == 2
