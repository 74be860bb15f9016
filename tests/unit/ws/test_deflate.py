"""permessage-deflate that leaves big messages alone, on its own: large messages go out as they are,
small ones compressed, and the peer's window stays in step."""

from __future__ import annotations

import pytest
from websockets.exceptions import PayloadTooBig
from websockets.frames import BINARY, CONT, Frame

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
