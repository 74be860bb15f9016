"""The door: deadlines and size bounds on a socket until its request is read, and a cap on such sockets."""

from __future__ import annotations

import asyncio
import enum
import http
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS

from gateway.config import Settings
from gateway.edge.throttled_log import ThrottledLog

_HEAD_END = re.compile(rb"\n\r?\n")  # where h11 ends a request head
# After a refusal, keep reading (and dropping) for a moment: closing a socket with unread bytes sends
# a reset, which can destroy the refusal before the client reads it.
LINGER_S = 2.0


@dataclass
class Door:
    """One server's bounds (its settings' header_timeout_s, body_timeout_s, max_header_bytes, max_headers
    and max_pending_handshakes), and its sockets still sending their first request head, oldest first."""

    settings: Settings
    evictions: ThrottledLog
    pending: dict[DoorProtocol, None] = field(default_factory=dict)  # an ordered set

    @classmethod
    def from_settings(cls, settings: Settings) -> Door:
        return cls(settings, ThrottledLog("gateway.edge.door", settings.accept_error_log_interval_s))

    def meter(self) -> HeadMeter:
        """A fresh count for one request head."""
        return HeadMeter(self.settings.max_header_bytes, self.settings.max_headers)


class HeadMeter:
    """Sans-I/O: measures a request head while its bytes arrive, so an oversized one is refused
    before anything parses it, whether it comes in one packet or a thousand."""

    def __init__(self, max_bytes: int, max_headers: int) -> None:
        self.max_bytes = max_bytes
        self.max_newlines = max_headers + 2  # the request line's, one per header, the blank line's
        self.size = 0
        self.newlines = 0
        self.complete = False
        self._tail = b""  # the last bytes seen, for a head end split across packets

    def feed(self, data: bytes) -> bool:
        """Count the next bytes; False once the head is over a bound."""
        if self.complete:
            return True
        window = self._tail + data
        end = _HEAD_END.search(window)
        head = data if end is None else data[: end.end() - len(self._tail)]
        self.size += len(head)
        self.newlines += head.count(b"\n")
        self.complete = end is not None
        self._tail = window[-2:]
        return self.size <= self.max_bytes and self.newlines <= self.max_newlines


def fits_websocket_parser(target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """uvicorn re-sends an upgrade request to the websockets parser, which drops (unanswered) a line
    over its length cap or a head over its header count: such a request gets 431 here instead."""
    lines = [len(target) + 16] + [len(name) + len(value) + 4 for name, value in headers]
    return len(headers) <= MAX_NUM_HEADERS and max(lines) <= MAX_LINE_LENGTH


class Phase(enum.Enum):
    HEAD = "head"  # reading a request line and headers (or waiting for the next request)
    BODY = "body"  # reading a request body
    ANSWER = "answer"  # the request is read; the app answers
    UPGRADED = "upgraded"  # handed to the WebSocket protocol
    CLOSING = "closing"  # a refusal is written; reading and dropping until the peer or LINGER_S closes


def refusal_bytes(status: int, text: str) -> bytes:
    body = text.encode()
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle off on a TCP connection. asyncio does it only for sockets whose `proto` says TCP, and
    a socket accepted from one bound by hand (`claim_port`, a supervisor's descriptor) says 0: a token
    frame written right after `accepted` then waited for the client's delayed ACK, about 40 ms."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DoorProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline per phase (head, body), a bounded head answered with
    431 on every path, and a cap on sockets that have not yet sent a whole request head."""

    door: ClassVar[Door]

    @classmethod
    def bound_to(cls, door: Door) -> type[DoorProtocol]:
        """A protocol class for one server: uvicorn builds each connection's protocol from the class alone."""
        return cast("type[DoorProtocol]", type(cls.__name__, (cls,), {"door": door}))

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, server_state, app_state, **kwargs)
        self.phase = Phase.HEAD
        self.meter = self.door.meter()
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        no_delay(transport)
        super().connection_made(transport)
        pending = self.door.pending
        if len(pending) >= self.door.settings.max_pending_handshakes:
            # Closing the oldest rather than the newest: a flood of stalled sockets then cannot
            # lock out a client whose head arrives in milliseconds.
            self.door.evictions.warning("closed the oldest of %d sockets still sending their first request", len(pending))
            next(iter(pending)).evict()
        pending[self] = None
        self._arm(self.door.settings.header_timeout_s, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.CLOSING:
            return
        if self.phase is Phase.HEAD and not self.meter.feed(data):
            self._refuse(431, "request header fields too large")
            return
        super().data_received(data)
        self._follow()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        if not fits_websocket_parser(event.target, self.headers):
            self._refuse(431, "request header fields too large")
            return
        self._enter(Phase.UPGRADED)
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()  # a kept-alive connection waits for its next head under the head deadline

    def _follow(self) -> None:
        """Enter the phase h11 has reached."""
        if self.phase in (Phase.UPGRADED, Phase.CLOSING) or self.transport.is_closing():
            return
        state = self.conn.their_state
        phase = Phase.HEAD if state is h11.IDLE else Phase.BODY if state is h11.SEND_BODY else Phase.ANSWER
        if phase is not self.phase:
            self._enter(phase)

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self._disarm()
        if phase is Phase.HEAD:
            self.meter = self.door.meter()
            self._arm(self.door.settings.header_timeout_s, self.transport.close)
        else:
            self._release()
        if phase is Phase.BODY:
            self._arm(self.door.settings.body_timeout_s, self._body_expired)

    def _body_expired(self) -> None:
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.disconnected = True  # the app's reads end, and nothing it sends reaches the wire
            self.cycle.message_event.set()
            self._refuse(408, "the request body did not arrive in time")
        else:
            self.transport.close()

    def _refuse(self, status: int, text: str) -> None:
        self._enter(Phase.CLOSING)
        self.transport.write(refusal_bytes(status, text))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_S, self.transport.close)

    def _arm(self, delay_s: float, callback: Callable[[], object]) -> None:
        self.deadline = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def evict(self) -> None:
        self._release()
        self.transport.close()

    def _release(self) -> None:
        self.door.pending.pop(self, None)


ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message for EMFILE, ENFILE, ENOBUFS, ENOMEM


def throttle_accept_errors(loop: asyncio.AbstractEventLoop, interval_s: float) -> None:
    """At the open-files limit asyncio reports every failed accept() with a traceback (thousands a
    second, megabytes of log); report them at most once per interval instead, as one line."""
    throttled = ThrottledLog("gateway.edge.door", interval_s)
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_FAILED:
            throttled.warning("accept() failed: %s; new connections wait for descriptors", context.get("exception"))
        elif _stale_accept_retry(context):
            pass  # asyncio schedules a retry per failed accept(); those that outlive the server find its socket closed
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def _stale_accept_retry(context: dict[str, Any]) -> bool:
    return isinstance(context.get("exception"), ValueError) and "._start_serving(" in repr(context.get("handle"))
