"""permessage-deflate that leaves big messages alone, on its own: large messages go out as they are,
small ones compressed, and the peer's window stays in step."""

from __future__ import annotations

from websockets.frames import BINARY, Frame

from gateway.ws.deflate import UNCOMPRESSED_FROM_BYTES, SkipLargeMessages


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
