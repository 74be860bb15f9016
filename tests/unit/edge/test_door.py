"""The door's pieces without a network: the head meter's byte and line bounds, and accept() failures
logged once per interval."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.edge.door import ACCEPT_FAILED, HeadMeter, throttle_accept_errors


def test_meter_measures_only_the_head() -> None:
    """A head followed by body bytes in the same packet counts only the head's bytes and lines."""
    meter = HeadMeter(max_bytes=40, max_headers=1)
    assert meter.feed(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n" + b"x" * 1000)
    assert meter.complete and meter.size == 28 and meter.newlines == 3


def test_meter_finds_a_head_end_split_across_packets() -> None:
    """The blank line that ends a head may arrive one byte at a time."""
    meter = HeadMeter(max_bytes=100, max_headers=4)
    for byte in b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY":
        assert meter.feed(bytes([byte]))
    assert meter.complete and meter.size == 27


@pytest.mark.parametrize(
    "packets",
    [[b"GET / HTTP/1.1\r\nX: " + b"a" * 200], [b"GET / HTTP/1.1\r\n"] + [b"X: a\r\n"] * 6],
    ids=["bytes", "headers"],
)
def test_meter_refuses_an_oversized_head_before_it_ends(packets: list[bytes]) -> None:
    """Too many bytes or too many header lines fail as soon as they arrive, head end or not."""
    meter = HeadMeter(max_bytes=100, max_headers=4)
    assert not all([meter.feed(packet) for packet in packets])


def test_accept_failures_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A thousand failed accepts make one warning line; other loop errors still reach the default handler."""
    loop = asyncio.new_event_loop()
    try:
        throttle_accept_errors(loop, 60)
        with caplog.at_level(logging.WARNING):
            for _ in range(1000):
                loop.call_exception_handler({"message": ACCEPT_FAILED, "exception": OSError(24, "Too many open files")})
            loop.call_exception_handler({"message": "something else"})
    finally:
        loop.close()
    accept_lines = [r for r in caplog.records if "accept()" in r.getMessage()]
    assert len(accept_lines) == 1 and accept_lines[0].exc_info is None
    assert any(r.getMessage() == "something else" for r in caplog.records)
