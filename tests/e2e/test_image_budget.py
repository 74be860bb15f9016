"""One ledger for image bytes and a budget for what `history` sends: revived sessions count, a resume
that cannot fit unloads detached sessions or is refused, and `include_images` is rate-limited (real server)."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator

import pytest
from PIL import Image

from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server, wait_until
from tests.e2e.test_abandoned import From
from tests.loop_watch import watching

GREEDY = {"max_tokens": 2, "temperature": 0}


def noise_png(seed: int, side: int = 200) -> bytes:
    """A PNG that does not compress (about 3 bytes a pixel), different for every seed."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (side, side), bytes(rng.getrandbits(8) for _ in range(side * side * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = [noise_png(seed) for seed in range(3)]
SIZE = max(len(image) for image in IMAGES)


@pytest.fixture(scope="module")
def tight(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """Room for two sessions' images in all; one session per client address."""
    settings = Settings(
        max_total_image_bytes=int(2.5 * SIZE),
        max_session_image_bytes=int(1.5 * SIZE),
        max_sessions_per_client=1,
        history_image_bytes_per_second=SIZE // 100,
        turns_per_minute=1e6,
    )
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


async def stored_image_sessions(server: RunningServer, address: str) -> list[tuple[str, str]]:
    """Three sessions with one image each, all unloaded to the store (the quota of one per address
    unloads each detached one when the next connects)."""
    made = []
    for image in IMAGES:
        client = await From(server.ws_url, address).open()
        await client.send({"type": "turn", "id": "t", "text": "look", "images": [image], "options": GREEDY})
        await client.until("done")
        await client.close()
        made.append((client.ready["session"], client.ready["resume_token"]))
    last = await From(server.ws_url, address).open()  # pushes the third out too
    await last.close()
    hub = server.app.state.ws.hub
    await wait_until(lambda: not any(session in hub.live for session, _ in made))
    return made


async def resume(server: RunningServer, address: str, session: tuple[str, str]) -> tuple[From, dict[str, object]]:
    client = await From(server.ws_url, address).open()
    await client.send({"type": "resume", "id": "r", "session": session[0], "token": session[1]})
    while True:
        frame = await client.recv()
        if frame["type"] in ("resumed", "error"):
            return client, frame


async def test_revived_sessions_count_and_never_push_attached_ones_out(tight: RunningServer) -> None:
    """Two revived sessions fill the ledger; a third resume is `overloaded` and the connection stays usable;
    once one of the two is detached, the third resume unloads it instead."""
    ledger = tight.app.state.runtime.turns.images
    a, b, c = await stored_image_sessions(tight, "127.0.1.1")
    with watching(tight.thread) as watch:
        first, answer = await resume(tight, "127.0.1.2", a)
        assert answer["type"] == "resumed"
        second, answer = await resume(tight, "127.0.1.3", b)
        assert answer["type"] == "resumed"
        third, answer = await resume(tight, "127.0.1.4", c)
    watch.check()
    assert answer["type"] == "error" and answer["code"] == "overloaded" and answer["retry_after_ms"]
    assert ledger.total <= ledger.max_bytes
    await third.send({"type": "ping", "id": "p"})
    assert (await third.until("pong"))["id"] == "p"
    await third.close()

    await first.close()  # a is detached now: it may go to make room
    await wait_until(lambda: len(tight.app.state.ws.hub.detached) >= 1)
    again, answer = await resume(tight, "127.0.1.5", c)
    assert answer["type"] == "resumed"
    assert a[0] not in tight.app.state.ws.hub.live and b[0] in tight.app.state.ws.hub.live
    assert ledger.total <= ledger.max_bytes
    await second.close()
    await again.close()


async def test_history_with_images_is_rate_limited(tight: RunningServer) -> None:
    """The first `history` with images is sent; the next within the budget's refill is `rate_limited` with
    a retry time, while `history` without images still answers."""
    client = await From(tight.ws_url, "127.0.1.9").open()
    await client.send({"type": "turn", "id": "t", "text": "look", "images": [IMAGES[0]], "options": GREEDY})
    await client.until("done")
    with watching(tight.thread) as watch:
        await client.send({"type": "history", "id": "h1", "include_images": True})
        history = await client.until("history")
        await client.send({"type": "history", "id": "h2", "include_images": True})
        refused = await client.until("error")
    watch.check()
    assert history["turns"][0]["images"][0]["data"] == IMAGES[0]
    assert refused["id"] == "h2" and refused["code"] == "rate_limited" and refused["retry_after_ms"] > 0
    await client.send({"type": "history", "id": "h3"})
    plain = await client.until("history")
    assert plain["id"] == "h3" and plain["turns"][0]["images"][0]["data"] is None
    await client.close()


async def test_processed_images_yield_to_what_sessions_hold(tight: RunningServer) -> None:
    """The engine's processed images and the sessions' images share `max_total_image_bytes`: after image
    turns the two together stay within it, the cache getting only what the sessions leave."""
    ledger, bound = tight.app.state.runtime.turns.images, tight.settings.max_total_image_bytes
    assert ledger.max_bytes == bound - bound // 8  # an eighth is the processed images' own
    clients = []
    for n, image in enumerate(IMAGES[:2]):
        client = await From(tight.ws_url, f"127.0.3.{n + 1}").open()
        await client.send({"type": "turn", "id": "t", "text": "look", "images": [image], "options": GREEDY})
        await client.until("done")
        clients.append(client)
        held = tight.engine.load().image_cache_bytes
        assert ledger.total + held <= bound
    assert tight.engine.loaded.prompt.images.max_bytes == bound - ledger.total
    for client in clients:
        await client.close()
