"""permessage-deflate that leaves big messages alone: a `history` with megabytes of images is sent without
the event loop deflating it, and small frames are still compressed (unit and real server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import websockets
from websockets.exceptions import PayloadTooBig
from websockets.frames import BINARY, CONT, Frame

from gateway.config import Settings
from gateway.ws_deflate import UNCOMPRESSED_FROM_BYTES, SkipLargeMessages
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.loop_watch import watching
from tests.test_abandoned import From
from tests.test_image_budget import noise_png


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


def bounded(max_inflated: int) -> SkipLargeMessages:
    extension = deflate()
    extension.max_inflated = max_inflated
    return extension


def test_a_compressed_message_inflates_to_at_most_its_bound() -> None:
    """Inflating to exactly the bound is read; one byte more is refused (1009) before it is all inflated."""
    sender = deflate()
    assert len(bounded(4096).decode(sender.encode(Frame(BINARY, bytes(4096))), max_size=1 << 20).data) == 4096
    with pytest.raises(PayloadTooBig):
        bounded(4096).decode(deflate().encode(Frame(BINARY, bytes(4097))), max_size=1 << 20)


def test_the_bound_counts_a_fragmented_message_whole() -> None:
    """Fragments of one compressed message count together; the next message starts from nothing."""
    receiver = bounded(4096)
    sender = deflate()
    receiver.decode(sender.encode(Frame(BINARY, bytes(3000), fin=False)), max_size=1 << 20)
    with pytest.raises(PayloadTooBig):
        receiver.decode(sender.encode(Frame(CONT, bytes(3000))), max_size=1 << 20)
    fresh, sender = bounded(4096), deflate()
    for _ in range(3):
        assert len(fresh.decode(sender.encode(Frame(BINARY, bytes(3000))), max_size=1 << 20).data) == 3000


def test_an_uncompressed_message_is_bound_only_by_the_message_size() -> None:
    """A message sent as it is (RSV1 unset) costs no inflating: the compressed bound does not apply."""
    frame = Frame(BINARY, bytes(8192))
    assert bounded(4096).decode(frame, max_size=1 << 20) is frame


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
