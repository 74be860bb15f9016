"""End to end: `regenerate` answers like a turn, reuses the KV of the path it answers, and keeps the old reply as a sibling."""

from __future__ import annotations

from typing import Any

from gateway.client import GatewayClient
from tests.conftest import RunningServer
from tests.e2e.waits import next_of

GREEDY = {"temperature": 0}


async def regenerate(client: GatewayClient, frame: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `accepted` and `done` of a regenerate (or the `error` that refused it, twice)."""
    await client.send({"type": "regenerate", **frame})
    first = await next_of(client.recv, "accepted", "error")
    return (first, first) if first["type"] == "error" else (first, await next_of(client.recv, "done"))


async def test_a_regenerate_reuses_the_whole_prompt_and_keeps_the_old_reply(server: RunningServer) -> None:
    """The new reply's prompt is the old one's: all of it but one token comes from held KV; history shows `2/2`."""
    async with GatewayClient(server.ws_url) as client:
        turn = await client.turn("t1", "describe a red square", max_tokens=4, **GREEDY)
        accepted, done = await regenerate(client, {"id": "r1", "options": {"max_tokens": 4, "temperature": 1.0, "seed": 7}})
        history = await client.request({"type": "history"})
    assert turn.accepted and turn.done and done["type"] == "done" and done["id"] == "r1"
    assert accepted["item_id"] == turn.accepted["item_id"] and accepted["prompt_tokens"] == turn.accepted["prompt_tokens"]
    assert done["usage"]["prompt_tokens"] == turn.done["usage"]["prompt_tokens"]
    assert done["usage"]["cached_tokens"] == done["usage"]["prompt_tokens"] - 1  # every token but the one that starts decoding
    user, reply = history["turns"]
    assert user["item_id"] == turn.accepted["item_id"] and user["siblings"] == 1
    assert reply["item_id"] == done["reply_id"] == accepted["reply_id"] != turn.done["reply_id"]
    assert (reply["siblings"], reply["index"], reply["text"]) == (2, 1, done["text"])


async def test_a_regenerate_of_an_earlier_reply_leaves_what_followed_on_the_old_branch(server: RunningServer) -> None:
    """Regenerating the first of two replies makes a path of one exchange; the second stays on the old branch."""
    async with GatewayClient(server.ws_url) as client:
        first = await client.turn("t1", "one", max_tokens=3, **GREEDY)
        await client.turn("t2", "two", max_tokens=3, **GREEDY)
        assert first.done
        _, done = await regenerate(client, {"id": "r1", "item_id": first.done["reply_id"], "options": {"max_tokens": 3}})
        history = await client.request({"type": "history"})
    assert [t["item_id"] for t in history["turns"]] == [first.accepted["item_id"], done["reply_id"]]  # type: ignore[index]
    assert history["turns"][1]["siblings"] == 2


async def test_regenerate_refuses_unknown_ids_wrong_kinds_and_a_running_turn(server: RunningServer) -> None:
    """`not_found` for no reply or an unknown id, `invalid_field` for a user item, `busy` while a turn runs."""
    async with GatewayClient(server.ws_url) as client:
        empty, _ = await regenerate(client, {"id": "r0"})
        turn = await client.turn("t1", "hello", max_tokens=2, **GREEDY)
        assert turn.accepted
        unknown, _ = await regenerate(client, {"id": "r1", "item_id": "nothing1"})
        wrong, _ = await regenerate(client, {"id": "r2", "item_id": turn.accepted["item_id"]})
        await client.send({"type": "turn", "id": "long", "text": "a story", "options": {"max_tokens": 300, "ignore_eos": True}})
        await next_of(client.recv, "accepted")
        busy, _ = await regenerate(client, {"id": "r3"})
        await client.send({"type": "cancel", "id": "long"})
        await next_of(client.recv, "done")
        after = await client.turn("t2", "still here?", max_tokens=2, **GREEDY)
    assert [e["code"] for e in (empty, unknown, wrong, busy)] == ["not_found", "not_found", "invalid_field", "busy"]
    assert [e["id"] for e in (empty, unknown, wrong, busy)] == ["r0", "r1", "r2", "r3"]
    assert after.done is not None


async def test_switch_goes_back_to_the_old_reply_and_the_next_turn_follows_it(server: RunningServer) -> None:
    """After a regenerate, `switch` to the old reply shows it `1/2`; the next turn's prompt holds it, from held KV."""
    async with GatewayClient(server.ws_url) as client:
        turn = await client.turn("t1", "hello there", max_tokens=4, **GREEDY)
        assert turn.done
        _, regenerated = await regenerate(client, {"id": "r1", "options": {"max_tokens": 4, "temperature": 1.0, "seed": 3}})
        switched = await client.request({"type": "switch", "item_id": turn.done["reply_id"], "id": "s1"})
        after = await client.turn("t2", "and then?", max_tokens=2, **GREEDY)
        history = await client.request({"type": "history"})
    assert switched["type"] == "history" and switched["id"] == "s1"
    assert [(t["item_id"], t["siblings"], t["index"]) for t in switched["turns"]][1] == (turn.done["reply_id"], 2, 0)
    assert switched["turns"][1]["text"] == turn.done["text"]
    assert [t["item_id"] for t in history["turns"]][:2] == [switched["turns"][0]["item_id"], turn.done["reply_id"]]
    assert after.done and after.done["usage"]["cached_tokens"] > 0
    assert regenerated["reply_id"] not in [t["item_id"] for t in history["turns"]]
    assert switched["turns"][1]["sibling_ids"] == [turn.done["reply_id"], regenerated["reply_id"]]


async def test_switch_refuses_unknown_ids_and_a_running_turn(server: RunningServer) -> None:
    """`not_found` for an id the session does not hold, `busy` while a turn runs; the connection stays usable."""
    async with GatewayClient(server.ws_url) as client:
        await client.send({"type": "switch", "item_id": "nothing1", "id": "s0"})
        unknown = await next_of(client.recv, "error")
        await client.send({"type": "turn", "id": "long", "text": "a story", "options": {"max_tokens": 300, "ignore_eos": True}})
        await next_of(client.recv, "accepted")
        await client.send({"type": "switch", "item_id": "nothing1", "id": "s1"})
        busy = await next_of(client.recv, "error")
        await client.send({"type": "cancel", "id": "long"})
        await next_of(client.recv, "done")
    assert (unknown["code"], unknown["id"], busy["code"], busy["id"]) == ("not_found", "s0", "busy", "s1")


async def test_a_stopped_reply_truncated_to_what_was_shown_is_all_the_next_prompt_sees(server: RunningServer) -> None:
    """`cancel`, then `truncate` to the characters shown: history holds only those, partial, and the next
    turn's prompt is what it would be had the reply been that short."""
    async with GatewayClient(server.ws_url) as client:
        await client.start_turn("c1", "tell me a long story", max_tokens=300, ignore_eos=True, **GREEDY)
        await next_of(client.recv, "token")
        await client.send({"type": "cancel", "id": "c1"})
        cancelled = await client.collect("c1")
        assert cancelled.done and len(cancelled.done["text"]) > 2
        cut = await client.request({"type": "truncate", "item_id": cancelled.done["reply_id"], "chars": 2, "id": "x"})
        after = await client.turn("t2", "go on", max_tokens=1, **GREEDY)
        bad = await client.request({"type": "truncate", "item_id": cancelled.done["reply_id"], "chars": 3})
    async with GatewayClient(server.ws_url) as fresh:
        await fresh.turn("c1", "tell me a long story", max_tokens=300, ignore_eos=True, **GREEDY)  # then cut by hand
        session = server.app.state.ws.connections[fresh.ready["session"]].session
        session.truncate(session.conversation.path[-1].id, 2)
        same = await fresh.turn("t2", "go on", max_tokens=1, **GREEDY)
    assert cut["type"] == "history" and cut["id"] == "x"
    assert cut["turns"][1]["text"] == cancelled.done["text"][:2] and cut["turns"][1]["partial"] is True
    assert after.accepted and same.accepted and after.accepted["prompt_tokens"] == same.accepted["prompt_tokens"]
    assert bad["type"] == "error" and bad["code"] == "invalid_field"


async def test_a_fork_is_a_new_session_of_the_path_that_reuses_its_kv(server: RunningServer) -> None:
    """`fork` at the first reply: `resume` takes up a session holding those items (same ids), and its first
    turn's prompt comes from held KV; the forking session is unchanged; an unknown id is `not_found`."""
    async with GatewayClient(server.ws_url) as client:
        first = await client.turn("t1", "hello there", max_tokens=4, **GREEDY)
        await client.turn("t2", "and more", max_tokens=4, **GREEDY)
        assert first.accepted and first.done
        forked = await client.request({"type": "fork", "item_id": first.done["reply_id"], "id": "f1"})
        unknown = await client.request({"type": "fork", "item_id": "nothing1", "id": "f2"})
        own = await client.request({"type": "history"})
    async with GatewayClient(server.ws_url) as other:
        await other.request({"type": "resume", "session": forked["session"], "token": forked["resume_token"]})
        other.last_seq = 0  # the fork's frames are numbered from 1: the client counted its first session's
        history = await other.request({"type": "history"})
        turn = await other.turn("t3", "what next?", max_tokens=2, **GREEDY)
    assert forked["type"] == "forked" and forked["id"] == "f1" and forked["session"] != client.ready["session"]
    assert [t["item_id"] for t in history["turns"]] == [first.accepted["item_id"], first.done["reply_id"]]
    assert len(own["turns"]) == 4 and (unknown["code"], unknown["id"]) == ("not_found", "f2")
    assert turn.done and turn.done["usage"]["cached_tokens"] >= first.done["usage"]["prompt_tokens"] - 1
