"""End to end: a real uvicorn server, the real engine on the demo model, the `websockets` client."""

from __future__ import annotations

import asyncio
import hashlib
import json

import msgpack
import websockets

from gateway.client import GatewayClient
from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, image_bytes, start_server, wait_until
from tests.e2e.waits import next_of

GREEDY = {"temperature": 0}


async def test_ready_announces_session_model_and_limits(server: RunningServer) -> None:
    """`ready` carries the session id, model id, protocol version and the limits in force."""
    async with GatewayClient(server.ws_url) as client:
        ready = client.ready
    assert ready["type"] == "ready" and ready["model"] == "gateway-demo" and ready["protocol"] == 2
    assert ready["limits"]["max_images_per_turn"] == server.settings.max_images_per_turn
    assert ready["limits"]["context_tokens"] == 2048 and ready["session"]
    assert ready["limits"]["trim_headroom_tokens"] == 2048 // 4  # trim_headroom: a quarter of the window


async def test_multi_turn_chat_with_two_images(server: RunningServer) -> None:
    """Two images in one turn both reach the prompt and stay with that turn in later turns."""
    red, blue = image_bytes(color=(255, 0, 0)), image_bytes("JPEG", color=(0, 0, 255))
    async with GatewayClient(server.ws_url) as client:
        plain = await client.turn("t0", "look", max_tokens=4, **GREEDY)
        await client.request({"type": "reset"})
        first = await client.turn("t1", "look", [red, blue], max_tokens=6, **GREEDY)
        second = await client.turn("t2", "and now?", max_tokens=6, **GREEDY)
        history = await client.request({"type": "history", "include_images": True})
        connection = server.app.state.ws.connections[client.ready["session"]]
    assert first.done and second.done and first.done["finish_reason"] in ("length", "stop")
    per_image = server.engine.loaded.prompt.image_tokens(48, 64) + 2  # plus begin/end-of-image tokens
    assert per_image > 2
    assert first.accepted and plain.accepted
    assert first.accepted["prompt_tokens"] == plain.accepted["prompt_tokens"] + 2 * per_image
    # the second turn's prompt still carries both images, in the first turn
    assert second.accepted and second.accepted["prompt_tokens"] > first.accepted["prompt_tokens"] + 2 * per_image - 1
    turns = history["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert [t["id"] for t in turns] == ["t1", "t1", "t2", "t2"]
    assert [i["sha256"] for i in turns[0]["images"]] == [hashlib.sha256(b).hexdigest() for b in (red, blue)]
    assert turns[0]["images"][0]["data"] == red and turns[2].get("images", []) == []
    assert turns[1]["text"] == first.text and turns[3]["text"] == second.text
    server_turn = connection.session.exchanges[0].turn
    assert [i.format for i in server_turn.images] == ["png", "jpeg"]


async def test_streamed_text_equals_done_and_usage(server: RunningServer) -> None:
    """The token deltas add up to `done.text`; usage totals add up; timing is present."""
    async with GatewayClient(server.ws_url) as client:
        result = await client.turn("u1", "hello there", max_tokens=10, **GREEDY)
    assert result.done is not None
    assert result.text == result.done["text"]
    usage = result.done["usage"]
    assert usage["completion_tokens"] == 10 and usage["total_tokens"] == usage["prompt_tokens"] + 10
    assert result.accepted and usage["prompt_tokens"] == result.accepted["prompt_tokens"]
    assert result.done["timing"]["ttft_ms"] > 0 and result.done["timing"]["tokens_per_s"] > 0


async def test_cancel_mid_stream_records_partial_reply(server: RunningServer) -> None:
    """`cancel` stops the turn early with finish_reason cancelled; the partial reply joins the history."""
    async with GatewayClient(server.ws_url) as client:
        await client.start_turn("c1", "tell me a long story", max_tokens=1500, **GREEDY)
        await next_of(client.recv, "token")
        await client.send({"type": "cancel", "id": "c1"})
        result = await client.collect("c1")
        history = await client.request({"type": "history"})
    assert result.done and result.done["finish_reason"] == "cancelled"
    assert result.done["usage"]["completion_tokens"] < 1500
    reply_id = result.done["reply_id"]
    no_tools = {"tool_calls": [], "call_id": None, "item_id": reply_id, "siblings": 1, "index": 0, "sibling_ids": [reply_id]}
    assert (
        history["turns"][1]
        == {"role": "assistant", "text": result.done["text"], "id": "c1", "images": [], "partial": True} | no_tools
    )


async def test_reset_clears_history(server: RunningServer) -> None:
    """After `reset` the history is empty and the next prompt is as short as a first turn's."""
    async with GatewayClient(server.ws_url) as client:
        first = await client.turn("r1", "hi", max_tokens=3, **GREEDY)
        await client.turn("r2", "again", max_tokens=3, **GREEDY)
        reset = await client.request({"type": "reset", "id": "x"})
        assert reset.pop("seq") > 0 and reset == {"type": "reset", "id": "x"}
        history = await client.request({"type": "history"})
        fresh = await client.turn("r3", "hi", max_tokens=3, **GREEDY)
    assert history["turns"] == []
    assert first.accepted and fresh.accepted and fresh.accepted["prompt_tokens"] == first.accepted["prompt_tokens"]


async def test_second_turn_while_busy_is_refused(server: RunningServer) -> None:
    """A turn sent while one runs gets `busy`; the running turn is untouched and finishes."""
    async with GatewayClient(server.ws_url) as client:
        await client.start_turn("b1", "long", max_tokens=300, **GREEDY)
        await client.start_turn("b2", "second", max_tokens=3)
        result = await client.collect("b1")
        history = await client.request({"type": "history"})
    assert [e["code"] for e in result.errors] == ["busy"] and result.errors[0]["id"] == "b2"
    assert result.done and result.done["finish_reason"] in ("length", "stop")
    assert [t["id"] for t in history["turns"]] == ["b1", "b1"]


async def test_disconnect_frees_the_generation_thread(demo_dirs: DemoDirs) -> None:
    """Without a grace period, a client vanishing mid-stream stops its generation; the next client's
    turn starts at once. (With one, the turn runs on for a resume: see test_sessions.py.)"""
    server = start_server(demo_dirs.model, Settings(session_grace_s=0))
    try:
        await _disconnect_frees(server)
    finally:
        server.stop()


async def _disconnect_frees(server: RunningServer) -> None:
    engine = server.engine
    async with GatewayClient(server.ws_url) as quitter:
        await quitter.start_turn("q1", "go on forever", max_tokens=1500, **GREEDY)
        await next_of(quitter.recv, "token")
        before = engine.tokens_generated
    await wait_until(lambda: not engine.busy.is_set(), timeout_s=60)
    assert engine.tokens_generated - before < 1000
    during = engine.tokens_generated
    async with GatewayClient(server.ws_url) as next_client:
        result = await next_client.turn("n1", "hello", max_tokens=5, **GREEDY)
    assert result.done and result.done["finish_reason"] in ("length", "stop")
    # The next turn had the model to itself: only its own (at most 5) tokens were generated meanwhile.
    assert engine.tokens_generated - during <= 5


async def test_bad_frames_get_errors_and_connection_stays_usable(server: RunningServer) -> None:
    """Malformed, unknown and invalid frames each get an error; history is unchanged; a turn then works."""
    async with GatewayClient(server.ws_url) as client:
        await client.turn("ok1", "first", max_tokens=3, **GREEDY)
        before = await client.request({"type": "history"})
        await client.ws.send(b"\xc1\x00")
        await client.ws.send(msgpack.packb([1, 2, 3]))
        await client.send({"type": "launch", "id": "z"})
        await client.send({"type": "turn", "id": "bad", "text": "x", "colour": "red"})
        await client.send({"type": "turn", "id": "bad2", "text": "x", "options": {"temperature": "hot"}})
        await client.send({"type": "turn", "id": "bad3", "text": "x", "images": [b"not an image"]})
        await client.send({"type": "cancel", "id": "nothing-running"})
        codes = [(await client.recv()) for _ in range(7)]
        after = await client.request({"type": "history"})
        result = await client.turn("ok2", "second", max_tokens=3, **GREEDY)
    assert [(c["code"], c.get("id")) for c in codes] == [
        ("bad_frame", None),
        ("bad_frame", None),
        ("unknown_type", "z"),
        ("invalid_field", "bad"),
        ("invalid_field", "bad2"),
        ("bad_image", "bad3"),
        ("not_found", "nothing-running"),
    ]
    assert before["turns"] == after["turns"]
    assert result.done and result.done["finish_reason"] in ("length", "stop")


async def test_configure_sets_session_defaults(server: RunningServer) -> None:
    """`configure` changes the defaults used by later turns, and the system prompt enters the prompt."""
    async with GatewayClient(server.ws_url) as client:
        bare = await client.turn("s0", "hi", max_tokens=3, **GREEDY)
        configured = await client.request({"type": "configure", "system": "Be brief.", "max_tokens": 4, "temperature": 0})
        await client.request({"type": "reset"})
        result = await client.turn("s1", "hi")
    assert configured["defaults"]["max_tokens"] == 4 and configured["defaults"]["system"] == "Be brief."
    assert result.done and result.done["usage"]["completion_tokens"] <= 4
    assert result.accepted and bare.accepted and result.accepted["prompt_tokens"] > bare.accepted["prompt_tokens"]


async def test_min_p_is_a_turn_option_and_a_session_default(server: RunningServer) -> None:
    """min_p 1 leaves only the likeliest token: a turn sampled at temperature 1.5 with it, or in a session configured
    with it, answers as greedy decoding does."""
    async with GatewayClient(server.ws_url) as client:
        greedy = await client.turn("g", "tell me about the sky", max_tokens=8, **GREEDY)
        await client.request({"type": "reset"})
        sampled = await client.turn("m", "tell me about the sky", max_tokens=8, temperature=1.5, min_p=1.0)
        await client.request({"type": "reset"})
        configured = await client.request({"type": "configure", "min_p": 1.0, "temperature": 1.5})
        by_default = await client.turn("d", "tell me about the sky", max_tokens=8)
    assert greedy.done and sampled.done and by_default.done
    assert configured["defaults"]["min_p"] == 1.0
    assert sampled.done["text"] == greedy.done["text"] == by_default.done["text"]


async def test_json_mode_turn(server: RunningServer) -> None:
    """A JSON text frame (images as base64) is answered in JSON text frames."""
    import base64

    async with websockets.connect(server.ws_url) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"  # JSON unless msgpack is asked for
        image = base64.b64encode(image_bytes("WEBP")).decode()
        await ws.send(json.dumps({"type": "turn", "id": "j1", "text": "hi", "images": [image], "options": {"max_tokens": 4}}))
        frames = []
        while not frames or frames[-1]["type"] != "done":
            message = await ws.recv()
            assert isinstance(message, str)
            frames.append(json.loads(message))
            assert frames[-1]["type"] != "error", frames[-1]  # else the loop would wait for a done that never comes
    assert frames[0]["type"] == "accepted" and frames[-1]["usage"]["completion_tokens"] <= 4


async def test_turn_too_large_for_context_and_trimming(demo_dirs: DemoDirs) -> None:
    """Oldest turns are dropped to fit the window (client told how many); one turn too big alone is refused."""
    running = start_server(demo_dirs.model, Settings(context_tokens=160, default_max_tokens=16))
    try:
        async with GatewayClient(running.ws_url) as client:
            dropped = []
            for i in range(8):
                result = await client.turn(f"t{i}", "one two three four five six seven eight nine ten", max_tokens=16, **GREEDY)
                assert result.accepted, result.errors
                dropped.append(result.accepted["dropped_turns"])
                assert result.accepted["prompt_tokens"] + 16 <= 160
            history = await client.request({"type": "history"})
            huge = await client.turn("huge", "word " * 400, max_tokens=16)
            await client.request({"type": "ping"})
        assert sum(dropped) > 0 and dropped[0] == 0
        assert len(history["turns"]) // 2 == 8 - sum(dropped)
        assert [e["code"] for e in huge.errors] == ["context_overflow"] and huge.done is None
    finally:
        running.stop()


async def test_past_max_history_turns_a_share_more_goes_at_once(demo_dirs: DemoDirs) -> None:
    """With max_history_turns 4, the fifth exchange drops two (trim_headroom's share of 4, one more), and
    the sixth none: the history's opening changes once, not on every turn."""
    running = start_server(demo_dirs.model, Settings(max_history_turns=4, default_max_tokens=2))
    try:
        async with GatewayClient(running.ws_url) as client:
            sizes = []
            for i in range(6):
                result = await client.turn(f"t{i}", f"turn {i}", **GREEDY)
                assert result.done, result.errors
                sizes.append(len((await client.request({"type": "history"}))["turns"]) // 2)
        assert sizes == [1, 2, 3, 4, 3, 4]
    finally:
        running.stop()


async def test_text_only_server_rejects_images(demo_dirs: DemoDirs) -> None:
    """With a text-only model a turn with an image gets images_unsupported, and text turns work."""
    running = start_server(demo_dirs.text_model)
    try:
        async with GatewayClient(running.ws_url) as client:
            refused = await client.turn("i1", "what is this?", [image_bytes()])
            ok = await client.turn("i2", "hello", max_tokens=3)
        assert client.ready["vision"] is False
        assert [e["code"] for e in refused.errors] == ["images_unsupported"]
        assert ok.done and ok.done["finish_reason"] in ("length", "stop")
    finally:
        running.stop()


async def test_other_sessions_do_not_notice(server: RunningServer) -> None:
    """Errors and cancels on one connection leave another connection's turn intact."""
    async with GatewayClient(server.ws_url) as calm, GatewayClient(server.ws_url) as noisy:
        await noisy.ws.send(b"\xc1")
        await noisy.recv()
        result = await calm.turn("calm1", "hello", max_tokens=5, **GREEDY)
        await asyncio.sleep(0)
    assert result.done and not result.errors


async def test_encoding_negotiation(server: RunningServer) -> None:
    """`ready` comes in msgpack for the gateway.msgpack subprotocol or ?encoding=msgpack, else in JSON."""
    async with websockets.connect(server.ws_url, subprotocols=["gateway.msgpack"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "gateway.msgpack"
        assert msgpack.unpackb(await ws.recv())["type"] == "ready"
    async with websockets.connect(server.ws_url + "?encoding=msgpack") as ws:
        assert msgpack.unpackb(await ws.recv())["type"] == "ready"
    async with websockets.connect(server.ws_url, subprotocols=["gateway.json"]) as ws:  # type: ignore[list-item]
        assert json.loads(await ws.recv())["type"] == "ready"
