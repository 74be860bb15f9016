"""permessage-deflate that leaves big messages alone, on a real server: a `history` with megabytes of images
is sent without the event loop deflating it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import websockets

from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e.test_abandoned import From
from tests.e2e.test_image_budget import noise_png
from tests.loop_watch import watching


@pytest.fixture(scope="module")
def server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(turns_per_minute=1e6))
    yield running
    running.stop()


async def test_history_with_megabytes_of_images_does_not_deflate_on_the_loop(server: RunningServer) -> None:
    """A compressing client asks for a history with 3 MB of images: it arrives whole, and no event-loop
    callback spends 50 ms of CPU on it (deflating it took about 40 ms a MiB)."""
    images = [noise_png(seed, 700) for seed in (11, 12)]
    client = await From(server.ws_url, "127.0.2.1").open()
    assert client.ws.protocol.extensions, "the server negotiated permessage-deflate"
    await client.send({"type": "turn", "id": "t", "text": "look", "images": images, "options": {"max_tokens": 1}})
    await client.until("done")
    with watching(server.thread) as watch:
        await client.send({"type": "history", "id": "h", "include_images": True})
        history = await client.until("history")
    watch.check()
    assert [i["data"] for i in history["turns"][0]["images"]] == images
    await client.close()


@pytest.fixture(scope="module")
def small_inflate(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(max_compressed_frame_bytes=256 * 1024))
    yield running
    running.stop()


async def open_msgpack(url: str, **options: Any) -> tuple[websockets.ClientConnection, dict[str, Any]]:
    ws = await websockets.connect(url, subprotocols=["gateway.msgpack"], **options)  # type: ignore[list-item]
    return ws, msgpack.unpackb(await ws.recv())


async def test_a_compressed_message_past_the_bound_closes_1009_and_an_uncompressed_one_is_read(
    small_inflate: RunningServer,
) -> None:
    """`ready.limits` names the bound; 512 KiB of zeros (a few hundred bytes compressed) closes the
    connection with 1009; the same message uncompressed gets an ordinary answer."""
    compressing, ready = await open_msgpack(small_inflate.ws_url)
    assert compressing.protocol.extensions, "the server negotiated permessage-deflate"
    assert ready["limits"]["max_compressed_frame_bytes"] == 256 * 1024
    await compressing.send(bytes(512 * 1024))
    with pytest.raises(websockets.ConnectionClosedError):
        await asyncio.wait_for(compressing.recv(), 10)
    assert compressing.close_code == 1009
    plain, _ = await open_msgpack(small_inflate.ws_url, compression=None)
    await plain.send(bytes(512 * 1024))
    answer = msgpack.unpackb(await asyncio.wait_for(plain.recv(), 10))
    assert answer["type"] == "error" and answer["code"] == "bad_frame"
    await plain.close()
