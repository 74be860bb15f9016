"""End to end: `edit` answers a new version of a message from the KV held for the path above it; `insert`, `delete`."""

from __future__ import annotations

from typing import Any

from gateway.client import GatewayClient, TurnResult
from tests.conftest import RunningServer, image_bytes, wait_until
from tests.e2e.waits import next_of

GREEDY = {"temperature": 0, "max_tokens": 4}


def shape(history: dict[str, Any]) -> list[tuple[str, str, int, int]]:
    return [(t["role"], t["text"], t["siblings"], t["index"]) for t in history["turns"]]


async def three_turns(client: GatewayClient) -> list[TurnResult]:
    turns = [await client.turn(f"t{n}", text, **GREEDY) for n, text in enumerate(("one", "two", "three"), 1)]
    assert all(t.accepted and t.done for t in turns)
    return turns


async def test_an_edited_message_gets_the_reply_a_fresh_session_of_that_path_gets_from_held_kv(server: RunningServer) -> None:
    """Editing the second message: greedy text and prompt equal a fresh session's given the same path; the
    path above the edit comes from held KV; the old message stays `1/2`, what followed it on its branch."""
    async with GatewayClient(server.ws_url) as client:
        first, second, _ = await three_turns(client)
        assert second.accepted and first.done
        edited = await client.edit("e1", second.accepted["item_id"], "deux", **GREEDY)
        history = await client.request({"type": "history"})
    async with GatewayClient(server.ws_url) as fresh:
        await fresh.turn("t1", "one", **GREEDY)
        same = await fresh.turn("t2", "deux", **GREEDY)
    assert isinstance(edited, TurnResult) and edited.accepted and edited.done and same.accepted and same.done
    assert edited.done["text"] == same.done["text"] and edited.accepted["prompt_tokens"] == same.accepted["prompt_tokens"]
    usage = edited.done["usage"]
    assert first.done["usage"]["prompt_tokens"] - 1 <= usage["cached_tokens"] < usage["prompt_tokens"]
    assert shape(history) == [
        ("user", "one", 1, 0),
        ("assistant", first.done["text"], 1, 0),
        ("user", "deux", 2, 1),
        ("assistant", edited.done["text"], 1, 0),
    ]
    assert [t["item_id"] for t in history["turns"]][2:] == [edited.accepted["item_id"], edited.done["reply_id"]]


async def test_an_edit_without_a_reply_is_answered_by_history_and_switch_goes_back(server: RunningServer) -> None:
    """`respond: false`: the new version ends the path, unanswered; `switch` to the old one shows its branch again."""
    async with GatewayClient(server.ws_url) as client:
        turns = await three_turns(client)
        old = turns[1].accepted["item_id"]  # type: ignore[index]
        edited = await client.edit(None, old, "deux")
        back = await client.switch(old)
    assert isinstance(edited, dict) and edited["type"] == "history"
    assert [t["text"] for t in edited["turns"]] == ["one", turns[0].text, "deux"]
    assert [t["text"] for t in back["turns"]] == ["one", turns[0].text, "two", turns[1].text, "three", turns[2].text]


async def test_insert_and_delete_change_the_active_path_and_the_next_prompt(server: RunningServer) -> None:
    """A note inserted first and a user message after the first reply show in history; deleting them gives the
    next turn the prompt it had without them (the same token count as a session that never had them)."""
    async with GatewayClient(server.ws_url) as client:
        first = await client.turn("t1", "one", **GREEDY)
        assert first.done
        noted = await client.insert(None, "note", "The user is a beginner.")
        inserted = await client.insert(first.done["reply_id"], "user", "an aside")
        wider = await client.turn("t2", "two", **GREEDY)
        for entry in (noted["turns"][0], inserted["turns"][3]):
            await client.delete(entry["item_id"])
        narrower = await client.turn("t3", "two", **GREEDY)
        history = await client.request({"type": "history"})
    async with GatewayClient(server.ws_url) as fresh:
        await fresh.turn("t1", "one", **GREEDY)
        same = await fresh.turn("t2", "two", **GREEDY)
    assert [t["role"] for t in noted["turns"]] == ["note", "user", "assistant"]
    assert [t["role"] for t in inserted["turns"]] == ["note", "user", "assistant", "user"]
    assert wider.accepted and narrower.accepted and same.accepted
    assert wider.accepted["prompt_tokens"] > same.accepted["prompt_tokens"]
    assert [t["text"] for t in history["turns"]][:3] == ["one", first.text, "two"]


async def test_editing_frames_refuse_unknown_ids_wrong_kinds_and_a_running_turn(server: RunningServer) -> None:
    """`not_found` for unknown ids, `invalid_field` for a reply edited or an edit that responds without an id,
    `busy` for edit, insert, delete and fork while a turn runs; the connection stays usable."""
    async with GatewayClient(server.ws_url) as client:
        turn = await client.turn("t1", "hello", **GREEDY)
        assert turn.done
        unknown = await client.request({"type": "delete", "item_id": "nothing1", "id": "d0"})
        reply = await client.request({"type": "edit", "item_id": turn.done["reply_id"], "id": "e0", "text": "x"})
        no_id = await client.request({"type": "edit", "item_id": turn.done["reply_id"], "text": "x"})
        await client.send({"type": "turn", "id": "long", "text": "a story", "options": {"max_tokens": 300, "ignore_eos": True}})
        await next_of(client.recv, "accepted")
        busy = []
        for frame in (
            {"type": "edit", "item_id": turn.done["reply_id"], "text": "x", "respond": False},
            {"type": "insert", "after": None, "role": "note", "text": "x"},
            {"type": "delete", "item_id": turn.done["reply_id"]},
            {"type": "fork"},
        ):
            await client.send({**frame, "id": frame["type"]})
            busy.append(await next_of(client.recv, "error"))
        await client.send({"type": "cancel", "id": "long"})
        await next_of(client.recv, "done")
        after = await client.turn("t2", "still here?", **GREEDY)
    assert (unknown["code"], unknown["id"]) == ("not_found", "d0")
    assert (reply["code"], reply["id"], no_id["code"]) == ("invalid_field", "e0", "invalid_field")
    assert [(e["code"], e["id"]) for e in busy] == [("busy", "edit"), ("busy", "insert"), ("busy", "delete"), ("busy", "fork")]
    assert after.done is not None


async def test_a_picture_left_on_an_inactive_branch_still_counts_in_the_image_ledger(server: RunningServer) -> None:
    """Editing a message's picture away keeps it held (its old branch shows it); `forget` gives it back."""
    ledger = server.app.state.ws.hub.turns.images
    async with GatewayClient(server.ws_url) as client:
        session = client.ready["session"]
        turn = await client.turn("t1", "what is this?", images=[image_bytes()], **GREEDY)
        assert turn.accepted
        before = ledger.held(session)
        edited = await client.edit(None, turn.accepted["item_id"], "no picture now", [])
        after = ledger.held(session)
        await client.send({"type": "forget"})  # (answered in the new session, numbered from 1 again)
        await wait_until(lambda: not ledger.holds(session))
    assert before == after > 0 and edited["turns"][0]["images"] == []


async def test_an_edit_that_changes_a_picture_answers_as_a_fresh_session_with_it(server: RunningServer) -> None:
    """A new picture in the edited message: the reply and prompt equal a fresh session's given that path, the
    exchange before it from held KV; `images: null` would have kept the old one."""
    red, blue = image_bytes(color=(200, 30, 30)), image_bytes(color=(30, 30, 200))
    async with GatewayClient(server.ws_url) as client:
        first = await client.turn("t1", "one", **GREEDY)
        looked = await client.turn("t2", "look", [red], **GREEDY)
        assert first.done and looked.accepted
        edited = await client.edit("e1", looked.accepted["item_id"], None, [blue], **GREEDY)
    async with GatewayClient(server.ws_url) as fresh:
        await fresh.turn("t1", "one", **GREEDY)
        same = await fresh.turn("t2", "look", [blue], **GREEDY)
    assert isinstance(edited, TurnResult) and edited.done and edited.accepted and same.done and same.accepted
    assert edited.done["text"] == same.done["text"] and edited.accepted["prompt_tokens"] == same.accepted["prompt_tokens"]
    assert edited.done["usage"]["cached_tokens"] >= first.done["usage"]["prompt_tokens"] - 1
