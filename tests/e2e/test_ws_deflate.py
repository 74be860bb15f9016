"""permessage-deflate that leaves big messages alone: a `history` with megabytes of images is sent without
the event loop deflating it, and small frames are still compressed (unit and real server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from websockets.frames import BINARY, Frame

from gateway.config import Settings
from gateway.ws.deflate import UNCOMPRESSED_FROM_BYTES, SkipLargeMessages
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e.test_abandoned import From
from tests.e2e.test_image_budget import noise_png
from tests.loop_watch import watching


def deflate() -> SkipLargeMessages:
    return SkipLargeMessages(False, False, 12, 12, {"memLevel": 5})


def test_a_large_message_goes_out_uncompressed_and_a_small_one_compressed() -> None:
    """At the threshold a message is sent as it is (RSV1 unset); below it, compressed (RSV1 set)."""
    big = Frame(BINARY, b"\x00" * UNCOMPRESSED_FROM_BYTES)
    small = Frame(BINARY, b"\x00" * 1000)
    sent_big, sent_small = deflate().encode(big), deflate().encode(small)
    assert sent_big is big and not sent_big.rsv1
    assert sent_small.rsv1 and len(sent_small.data) < 100


def test_skipped_messages_keep_the_windows_in_step() -> None:
    """Compressed, uncompressed, compressed again with context takeover: the peer inflates what it gets."""
    sender, receiver = deflate(), deflate()
    for payload in (b"hello " * 50, bytes(range(256)) * 1200, b"hello " * 60):
        frame = sender.encode(Frame(BINARY, payload))
        assert receiver.decode(frame).data == payload


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
