"""End to end on the demo engine: a live turn's prompt keeps the history's KV warm (history first, its live
exchanges' frames where they stood, then the window's new frames, then the text): only those are prefilled."""

from __future__ import annotations

from gateway.client import GatewayClient
from gateway.engine.contract import GenerationRequest
from tests.conftest import RunningServer, image_bytes
from tests.e2e import test_live_window_ws as live_ws
from tests.e2e.test_live_window_ws import GREEDY, stream

live_server, submitted = live_ws.live_server, live_ws.submitted

FRAMES = [image_bytes("JPEG", color=color, size=(80, 60)) for color in ((220, 20, 20), (20, 20, 220), (20, 200, 20))]


async def test_a_live_turn_reuses_the_history_and_encodes_only_new_frames(
    live_server: RunningServer, submitted: list[GenerationRequest]
) -> None:
    """After a text exchange, a live turn takes its whole prompt before the window from held KV; a second live
    turn over the same frames plus a new one holds the first's whole prompt, frames included, and shows the new
    one alone: no encoder pass needs the held frames' outputs."""
    encoder = live_server.engine.encoder_cache
    async with GatewayClient(live_server.ws_url) as client:
        text = await client.turn("t1", "hello there", **GREEDY)
        await stream(client, [(FRAMES[0], 100), (FRAMES[1], 200)])
        first = await client.turn("l1", "what is it?", live=True, **GREEDY)
        await stream(client, [(FRAMES[2], 300)])
        hits, encoded = encoder.hits, encoder.encoded
        second = await client.turn("l2", "and now?", live=True, **GREEDY)
    assert text.done and first.done and second.done and second.accepted
    assert first.done["usage"]["cached_tokens"] >= text.done["usage"]["prompt_tokens"]
    assert second.done["usage"]["cached_tokens"] >= first.done["usage"]["prompt_tokens"]
    assert second.accepted["live_frames"]["count"] == 3
    assert [len(m.images) for m in submitted[-1].messages] == [0, 0, 2, 0, 1]
    assert (encoder.hits, encoder.encoded) == (hits, encoded)
