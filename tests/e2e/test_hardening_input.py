"""Hostile input against a real server: WebSocket violations close with the right code; every bad frame,
value or attachment gets an `error`, leaves the session unchanged and the connection usable."""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import json
import os
import random
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgpack
import pytest
import websockets
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from gateway.client import GatewayClient, TurnResult
from gateway.config import Settings
from gateway.errors import ErrorCode
from gateway.ws import protocol as p
from tests.conftest import DemoDirs, RunningServer, image_bytes, start_server, wait_until

GREEDY: dict[str, Any] = {"temperature": 0}
ERROR_CODES = {code.value for code in ErrorCode}
FrameId = str | tuple[str | None, ...] | None  # a tuple: any of these ids is fine
# Some input tests send far more frames than a person would; the rate limiter is not what they test.
UNLIMITED_RATE: dict[str, Any] = {"frames_per_second": 1e6, "turns_per_minute": 1e7}
SMALL = Settings(
    max_frame_bytes=64 * 1024,
    max_image_bytes=16 * 1024,
    max_image_pixels=10_000,
    max_images_per_turn=2,
    max_text_chars=100,
    **UNLIMITED_RATE,
)


@pytest.fixture(scope="module")
def lenient(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(**UNLIMITED_RATE))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def small(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, SMALL)
    yield running
    running.stop()


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[GatewayClient]:
    async with GatewayClient(server.ws_url) as connected:
        yield connected


# ---- helpers: one good exchange, the rejection, then proof that nothing changed ---------------------


async def history_turns(client: GatewayClient) -> list[dict[str, Any]]:
    frame = await client.request({"type": "history", "id": "h"})
    assert frame["type"] == "history" and frame["id"] == "h", frame  # nothing stray arrived first
    return list(frame["turns"])


async def good_turn(client: GatewayClient, turn_id: str, text: str = "hello", images: list[bytes] | None = None) -> TurnResult:
    result = await client.turn(turn_id, text, images, max_tokens=3, **GREEDY)
    assert result.errors == [] and result.accepted is not None, result.errors
    assert result.done is not None and result.done["finish_reason"] in ("length", "stop")
    assert result.text == result.done["text"]
    return result


NO_TOOLS = {"tool_calls": [], "call_id": None}  # history fields of an entry without tool calls


async def prime(client: GatewayClient) -> list[dict[str, Any]]:
    """One finished exchange, so that 'the history is unchanged' has something to compare."""
    await good_turn(client, "prime")
    return await history_turns(client)


async def assert_usable(client: GatewayClient, before: list[dict[str, Any]]) -> None:
    """The history is what it was; a normal turn then succeeds and joins it, streamed text and all."""
    assert await history_turns(client) == before
    result = await good_turn(client, "after")
    assert result.done is not None
    turns = await history_turns(client)
    assert turns[:-2] == before
    assert turns[-2]["role"] == "user" and turns[-2]["id"] == "after"
    assert turns[-1] == {
        "role": "assistant",
        "text": result.done["text"],
        "id": "after",
        "images": [],
        "partial": False,
    } | NO_TOOLS | {"item_id": result.done["reply_id"], "siblings": 1, "index": 0, "sibling_ids": [result.done["reply_id"]]}


async def send_raw(client: GatewayClient, payload: bytes | str | dict[str, Any]) -> None:
    if isinstance(payload, dict):
        await client.send(payload)
    else:
        await client.ws.send(payload)


async def expect_error(client: GatewayClient, codes: set[str], frame_id: FrameId) -> dict[str, Any]:
    frame = await asyncio.wait_for(client.recv(), 10)
    assert frame["type"] == "error", frame
    assert frame["code"] in codes, frame
    assert frame["id"] in frame_id if isinstance(frame_id, tuple) else frame["id"] == frame_id, frame
    assert isinstance(frame["message"], str) and frame["message"]
    assert "Traceback" not in frame["message"] and 'File "' not in frame["message"]
    return frame


async def check_rejected(
    client: GatewayClient, payload: bytes | str | dict[str, Any], codes: set[str], frame_id: FrameId
) -> None:
    before = await prime(client)
    await send_raw(client, payload)
    await expect_error(client, codes, frame_id)
    await assert_usable(client, before)


# ---- WebSocket protocol violations: closed by the library with the right code -----------------------


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


class RawWebSocket:
    """A client written by hand on a TCP socket, so it can send frames no WebSocket library would."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the TCP connection")
        self.buffer += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_frame(self) -> tuple[int, bytes]:
        first, second = self._take(2)
        assert second & 0x80 == 0, "a server never masks its frames"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        return first & 0x0F, self._take(length)

    def send_frame(self, first_byte: int, payload: bytes, masked: bool = True) -> None:
        mask_bit = 0x80 if masked else 0
        if len(payload) < 126:
            header = bytes([first_byte, mask_bit | len(payload)])
        else:
            header = bytes([first_byte, mask_bit | 126]) + struct.pack("!H", len(payload))
        if masked:
            key = os.urandom(4)
            payload = key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + payload)

    def close_code(self) -> int:
        """Read frames until the server's close frame; return its status code."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                return int(code)

    def close(self) -> None:
        self.sock.close()


TEXT, BINARY, CONT, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9
FIN = 0x80

PROTOCOL_VIOLATIONS: list[tuple[str, list[tuple[int, bytes, bool]], int]] = [
    ("unmasked-client-frame", [(FIN | TEXT, b'{"type":"ping"}', False)], 1002),
    ("reserved-data-opcode-3", [(FIN | 0x3, b"x", True)], 1002),
    ("reserved-control-opcode-b", [(FIN | 0xB, b"x", True)], 1002),
    ("rsv1-without-extension", [(FIN | 0x40 | TEXT, b"{}", True)], 1002),
    ("rsv2-set", [(FIN | 0x20 | TEXT, b"{}", True)], 1002),
    ("rsv3-set", [(FIN | 0x10 | BINARY, b"\x80", True)], 1002),
    ("fragmented-ping", [(PING, b"x", True)], 1002),
    ("ping-payload-over-125", [(FIN | PING, b"x" * 126, True)], 1002),
    ("continuation-without-start", [(FIN | CONT, b"x", True)], 1002),
    ("new-message-inside-fragmented-one", [(TEXT, b"{", True), (FIN | TEXT, b"}", True)], 1002),
    ("close-with-code-999", [(FIN | CLOSE, struct.pack("!H", 999), True)], 1002),
    ("close-payload-of-one-byte", [(FIN | CLOSE, b"\x03", True)], 1002),
    ("close-reason-invalid-utf8", [(FIN | CLOSE, struct.pack("!H", 1000) + b"\xff", True)], 1007),
    ("text-frame-invalid-utf8", [(FIN | TEXT, b'{"type":"\xff\xfe"}', True)], 1007),
    ("fragmented-text-invalid-utf8", [(TEXT, b'{"id":"\xc3', True), (FIN | CONT, b'("}', True)], 1007),
]


@pytest.mark.parametrize(("frames", "expected"), [pytest.param(f, c, id=name) for name, f, c in PROTOCOL_VIOLATIONS])
def test_protocol_violation_closes_with_its_code(
    server: RunningServer, frames: list[tuple[int, bytes, bool]], expected: int
) -> None:
    """A frame that breaks RFC 6455 gets a close frame with the matching code, then the TCP close."""
    registry = server.app.state.ws.connections
    raw = RawWebSocket(server.port)
    try:
        opcode, payload = raw.read_frame()
        ready = json.loads(payload)
        assert opcode == TEXT and ready["type"] == "ready"
        assert ready["session"] in registry
        for first_byte, payload, masked in frames:
            raw.send_frame(first_byte, payload, masked)
        assert raw.close_code() == expected
        with pytest.raises((EOFError, ConnectionResetError)):
            while True:
                raw.read_frame()
    finally:
        raw.close()
    wait_for(lambda: ready["session"] not in registry)


async def test_invalid_utf8_text_message_closes_1007(server: RunningServer) -> None:
    """A text message that is not UTF-8, sent with the websockets client, is closed with 1007."""
    async with GatewayClient(server.ws_url) as client:
        await client.ws.send(b'{"type":"ping","id":"\xff\xfe"}', text=True)
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(client.recv(), 10)
        assert client.ws.close_code == 1007
    await wait_until(lambda: client.ready["session"] not in server.app.state.ws.connections)


async def test_message_over_max_frame_bytes_closes_1009(small: RunningServer) -> None:
    """A message one byte over max_frame_bytes is closed with 1009; one of exactly that size is read."""
    limit = small.settings.max_frame_bytes
    async with GatewayClient(small.ws_url, compression=None) as client:
        assert client.ready["limits"]["max_frame_bytes"] == limit == 64 * 1024
        await client.ws.send(os.urandom(limit))  # at the limit: read, and refused as msgpack
        await expect_error(client, {"bad_frame"}, None)
        await good_turn(client, "fits")
        await client.ws.send(os.urandom(limit + 1))
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(client.recv(), 10)
        assert client.ws.close_code == 1009
    await wait_until(lambda: client.ready["session"] not in small.app.state.ws.connections)


async def test_compressed_message_over_max_frame_bytes_closes_1009(small: RunningServer) -> None:
    """permessage-deflate does not get around the cap: 1 MiB of zeros compresses tiny and is still refused."""
    async with GatewayClient(small.ws_url) as client:
        assert client.ws.protocol.extensions, "the server negotiated permessage-deflate"
        await client.ws.send(bytes(1024 * 1024))
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(client.recv(), 10)
        assert client.ws.close_code == 1009


# ---- malformed msgpack and JSON: `bad_frame` (or unknown_type / invalid_field), connection stays open ---


def packb(value: Any, **options: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True, **options))


TURN_HEADER = b"\x83\xa4type\xa4turn\xa2id\xa1x"  # a 3-entry map: type, id, then one more field
BAD = {"bad_frame"}

MALFORMED: list[tuple[str, bytes | str, set[str], str | None]] = [
    # msgpack that does not decode
    ("never-used-byte-c1", b"\xc1", BAD, None),
    ("c1-inside-a-map", b"\x81\xa4type\xc1", BAD, None),
    ("empty-binary-message", b"", BAD, None),
    ("trailing-byte-after-a-map", packb({"type": "ping", "id": "p"}) + b"\x00", BAD, None),
    ("two-maps-in-one-message", packb({"type": "ping"}) * 2, BAD, None),
    ("truncated-map", packb({"type": "turn", "id": "t", "text": "hello"})[:-3], BAD, None),
    ("array32-claims-4G-items", b"\xdd\xff\xff\xff\xff", BAD, None),
    ("map32-claims-4G-pairs", b"\xdf\xff\xff\xff\xff", BAD, None),
    ("str32-claims-4GiB", b"\xdb\xff\xff\xff\xff", BAD, None),
    ("bin32-claims-4GiB", b"\xc6\xff\xff\xff\xff", BAD, None),
    ("ext32-claims-4GiB", b"\xc9\xff\xff\xff\xff\x05", BAD, None),
    ("str32-claims-4GiB-as-id", b"\x82\xa4type\xa4turn\xa2id\xdb\xff\xff\xff\xff", BAD, None),
    ("bin32-claims-4GiB-as-image", TURN_HEADER + b"\xa6images\x91\xc6\xff\xff\xff\xff", BAD, None),
    ("array32-claims-4G-images", TURN_HEADER + b"\xa6images\xdd\xff\xff\xff\xff", BAD, None),
    ("2000-images-wide", packb({"type": "turn", "id": "w", "images": [b""] * 2000}), BAD, None),
    ("10000-nested-arrays", b"\x91" * 10_000 + b"\xc0", BAD, None),
    ("10000-nested-maps", b"\x81\xa1k" * 10_000 + b"\xc0", BAD, None),
    ("10000-nested-arrays-in-text", TURN_HEADER + b"\xa4text" + b"\x91" * 10_000 + b"\xc0", BAD, None),
    ("int-key", packb({1: "x", "type": "ping"}), BAD, None),
    ("nil-key", packb({None: "x", "type": "ping"}), BAD, None),
    ("float-key", packb({1.5: "x", "type": "ping"}), BAD, None),
    ("array-key", b"\x82\x91\x01\xa1x\xa4type\xa4ping", BAD, None),
    ("int-key-in-options", packb({"type": "turn", "id": "k", "options": {1: 2}}), BAD, None),
    ("bin-keys", packb({b"type": b"ping", b"id": b"b"}), {"bad_frame", "unknown_type"}, None),
    ("ext-type", packb(msgpack.ExtType(5, b"abc")), BAD, None),
    ("ext-type-as-id", packb({"type": "ping", "id": msgpack.ExtType(1, b"x")}), BAD, None),
    ("timestamp", packb(msgpack.Timestamp(1_700_000_000, 0)), BAD, None),
    ("timestamp-as-text", packb({"type": "turn", "id": "ts", "text": msgpack.Timestamp(0, 5)}), BAD, None),
    (
        "datetime-as-id",
        packb({"type": "ping", "id": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)}, datetime=True),
        BAD,
        None,
    ),
    ("invalid-utf8-str-value", b"\x81\xa4type\xa4\xff\xfe\xfd\xfc", BAD, None),
    ("invalid-utf8-str-key", b"\x81\xa4\xff\xfe\xfd\xfc\xa4ping", BAD, None),
    ("invalid-utf8-in-turn-text", TURN_HEADER + b"\xa4text\xa2\xc3\x28", BAD, None),
    ("utf8-encoded-surrogate", b"\x82\xa4type\xa4ping\xa2id\xa3\xed\xa0\x80", BAD, None),
    # msgpack that decodes to something other than a frame
    ("nil", packb(None), BAD, None),
    ("integer", packb(5), BAD, None),
    ("string", packb("ping"), BAD, None),
    ("bin", packb(b'{"type":"ping"}'), BAD, None),
    ("array", packb(["type", "ping"]), BAD, None),
    ("empty-map", packb({}), {"unknown_type"}, None),
    # JSON (text messages)
    ("json-empty", "", BAD, None),
    ("json-invalid", '{"type": "ping",', BAD, None),
    ("json-array", '["type", "ping"]', BAD, None),
    ("json-string", '"ping"', BAD, None),
    ("json-null", "null", BAD, None),
    ("json-trailing-data", '{"type": "ping"} x', BAD, None),
    ("json-two-objects", '{"type": "ping"}{"type": "ping"}', BAD, None),
    ("json-10000-nested-arrays", "[" * 10_000 + "]" * 10_000, BAD, None),
    ("json-10000-nested-as-id", '{"type": "ping", "id": ' + "[" * 10_000 + "]" * 10_000 + "}", BAD, None),
    ("json-5000-digit-integer", '{"type": "turn", "id": "j", "options": {"seed": ' + "9" * 5000 + "}}", BAD, None),
    ("json-nan", '{"type": "turn", "id": "j", "options": {"temperature": NaN}}', {"bad_frame", "invalid_field"}, "j"),
    ("json-infinity", '{"type": "turn", "id": "j", "options": {"top_p": Infinity}}', {"bad_frame", "invalid_field"}, "j"),
    ("json-bad-base64-image", '{"type": "turn", "id": "j", "images": ["!!not base64!!"]}', {"invalid_field"}, "j"),
    ("json-bytes-as-number", '{"type": "turn", "id": "j", "images": [5]}', {"invalid_field"}, "j"),
]


@pytest.mark.parametrize(("payload", "codes", "frame_id"), [pytest.param(m, c, i, id=n) for n, m, c, i in MALFORMED])
async def test_malformed_message_gets_an_error_and_changes_nothing(
    client: GatewayClient, payload: bytes | str, codes: set[str], frame_id: str | None
) -> None:
    """Undecodable or non-frame messages get an `error`; the session is unchanged and a turn then works."""
    await check_rejected(client, payload, codes, frame_id)


async def test_lone_surrogate_id_in_json_gets_an_error_and_changes_nothing(client: GatewayClient) -> None:
    """A JSON frame whose id is a lone UTF-16 surrogate escape gets `bad_frame`; the connection keeps talking."""
    await check_rejected(client, '{"type": "ping", "id": "\\ud800"}', BAD, None)


# ---- schema violations: invalid_field / unknown_type with the id echoed --------------------------------

# An invalid id may be echoed or not; where the expected id is a tuple, either value passes.
SCHEMA: list[tuple[str, dict[str, Any], str, str | tuple[str | None, ...] | None]] = [
    ("unknown-type", {"type": "launch", "id": "s1"}, "unknown_type", "s1"),
    ("server-frame-type", {"type": "done", "id": "s1"}, "unknown_type", "s1"),
    ("missing-type", {"id": "s1", "text": "hi"}, "unknown_type", "s1"),
    ("type-not-a-string", {"type": 7, "id": "s1"}, "unknown_type", "s1"),
    ("type-wrong-case", {"type": "TURN", "id": "s1"}, "unknown_type", "s1"),
    ("unknown-field", {"type": "turn", "id": "s1", "text": "x", "colour": "red"}, "invalid_field", "s1"),
    ("unknown-option", {"type": "turn", "id": "s1", "options": {"temprature": 0}}, "invalid_field", "s1"),
    ("unknown-field-on-ping", {"type": "ping", "id": "s1", "extra": 1}, "invalid_field", "s1"),
    ("turn-without-id", {"type": "turn", "text": "x"}, "invalid_field", None),
    ("cancel-without-id", {"type": "cancel"}, "invalid_field", None),
    ("id-not-a-string", {"type": "ping", "id": 5}, "invalid_field", None),
    ("id-empty", {"type": "turn", "id": "", "text": "x"}, "invalid_field", ("", None)),
    ("id-65-chars", {"type": "turn", "id": "i" * 65, "text": "x"}, "invalid_field", ("i" * 65, None)),
    ("text-not-a-string", {"type": "turn", "id": "s1", "text": 5}, "invalid_field", "s1"),
    ("text-is-bytes", {"type": "turn", "id": "s1", "text": b"hello"}, "invalid_field", "s1"),
    ("images-not-a-list", {"type": "turn", "id": "s1", "images": b"\x89PNG"}, "invalid_field", "s1"),
    ("image-as-string", {"type": "turn", "id": "s1", "images": [5]}, "invalid_field", "s1"),
    ("options-not-a-map", {"type": "turn", "id": "s1", "options": [0.5]}, "invalid_field", "s1"),
    ("include-images-not-bool", {"type": "history", "id": "s1", "include_images": "yes"}, "invalid_field", "s1"),
    ("temperature-a-string", {"type": "turn", "id": "s1", "options": {"temperature": "hot"}}, "invalid_field", "s1"),
    ("temperature-above-5", {"type": "turn", "id": "s1", "options": {"temperature": 5.5}}, "invalid_field", "s1"),
    ("temperature-negative", {"type": "turn", "id": "s1", "options": {"temperature": -0.1}}, "invalid_field", "s1"),
    ("temperature-nan", {"type": "turn", "id": "s1", "options": {"temperature": float("nan")}}, "invalid_field", "s1"),
    ("top-p-zero", {"type": "turn", "id": "s1", "options": {"top_p": 0.0}}, "invalid_field", "s1"),
    ("top-p-infinite", {"type": "turn", "id": "s1", "options": {"top_p": float("inf")}}, "invalid_field", "s1"),
    ("top-k-negative", {"type": "turn", "id": "s1", "options": {"top_k": -1}}, "invalid_field", "s1"),
    ("top-k-float", {"type": "turn", "id": "s1", "options": {"top_k": 1.5}}, "invalid_field", "s1"),
    ("max-tokens-zero", {"type": "turn", "id": "s1", "options": {"max_tokens": 0}}, "invalid_field", "s1"),
    ("max-tokens-above-limit", {"type": "turn", "id": "s1", "options": {"max_tokens": 4097}}, "invalid_field", "s1"),
    ("max-tokens-bool", {"type": "turn", "id": "s1", "options": {"max_tokens": True}}, "invalid_field", "s1"),
    ("repetition-penalty-zero", {"type": "turn", "id": "s1", "options": {"repetition_penalty": 0}}, "invalid_field", "s1"),
    ("seed-negative", {"type": "turn", "id": "s1", "options": {"seed": -1}}, "invalid_field", "s1"),
    ("seed-2-to-the-64-minus-1", {"type": "turn", "id": "s1", "options": {"seed": 2**64 - 1}}, "invalid_field", "s1"),
    ("stop-empty-string", {"type": "turn", "id": "s1", "options": {"stop": [""]}}, "invalid_field", "s1"),
    ("stop-129-chars", {"type": "turn", "id": "s1", "options": {"stop": ["s" * 129]}}, "invalid_field", "s1"),
    ("stop-not-a-list", {"type": "turn", "id": "s1", "options": {"stop": "END"}}, "invalid_field", "s1"),
    ("configure-system-too-long", {"type": "configure", "id": "s1", "system": "s" * 32_001}, "invalid_field", "s1"),
    ("configure-max-tokens-above-limit", {"type": "configure", "id": "s1", "max_tokens": 10_000}, "invalid_field", "s1"),
    ("configure-unknown-field", {"type": "configure", "id": "s1", "options": {}}, "invalid_field", "s1"),
]


@pytest.mark.parametrize(("frame", "code", "frame_id"), [pytest.param(f, c, i, id=n) for n, f, c, i in SCHEMA])
async def test_schema_violation_gets_its_code_with_the_id(
    client: GatewayClient, frame: dict[str, Any], code: str, frame_id: FrameId
) -> None:
    """A frame of the wrong shape gets `invalid_field` / `unknown_type` naming its id; nothing changes."""
    await check_rejected(client, frame, {code}, frame_id)


async def test_rejected_configure_keeps_the_defaults(client: GatewayClient) -> None:
    """An out-of-range `configure` changes no default: the next `configured` shows the old values."""
    before = await client.request({"type": "configure", "id": "c0"})
    await client.send({"type": "configure", "id": "c1", "temperature": 9.0, "system": "ignored"})
    await expect_error(client, {"invalid_field"}, "c1")
    after = await client.request({"type": "configure", "id": "c2"})
    assert before["defaults"] == after["defaults"] and after["defaults"]["system"] is None


# ---- limits: too_large -------------------------------------------------------------------------------


def noise_png(size: tuple[int, int], seed: int = 0) -> bytes:
    width, height = size
    image = Image.frombytes("RGB", size, random.Random(seed).randbytes(width * height * 3))
    return encode(image, "PNG")


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def padded(data: bytes, size: int) -> bytes:
    """A PNG padded after IEND to exactly `size` bytes: decoders ignore the tail, the byte cap does not."""
    assert len(data) <= size
    return data + bytes(size - len(data))


LIMIT_CASES: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("text-101-chars", lambda: {"text": "a" * 101}),
    ("text-101-multibyte-chars", lambda: {"text": "é" * 101}),
    ("three-images", lambda: {"images": [image_bytes(size=(8, 8))] * 3}),
    ("image-one-byte-over-max-image-bytes", lambda: {"images": [padded(image_bytes(size=(8, 8)), 16 * 1024 + 1)]}),
    ("image-101x100-over-max-image-pixels", lambda: {"images": [image_bytes(size=(101, 100))]}),
    ("image-over-pixels-second-of-two", lambda: {"images": [image_bytes(size=(8, 8)), image_bytes("WEBP", size=(200, 51))]}),
    ("stop-strings-9", lambda: {"options": {"stop": [f"s{i}" for i in range(9)]}}),
]


@pytest.mark.parametrize("fields", [pytest.param(f, id=n) for n, f in LIMIT_CASES])
async def test_limit_exceeded_is_too_large(small: RunningServer, fields: Callable[[], dict[str, Any]]) -> None:
    """Text, image count, image bytes, image pixels and stop strings above the announced limits: `too_large`."""
    async with GatewayClient(small.ws_url) as client:
        assert client.ready["limits"]["max_image_pixels"] == 10_000
        await check_rejected(client, {"type": "turn", "id": "big", **fields()}, {"too_large"}, "big")


async def test_limits_are_inclusive(small: RunningServer) -> None:
    """Exactly at each limit is fine: 100 characters, two images, 16 KiB and 100x100 pixels."""
    at_cap = padded(image_bytes(size=(100, 100)), 16 * 1024)
    async with GatewayClient(small.ws_url) as client:
        await good_turn(client, "chars", "b" * 100)
        await good_turn(client, "cap", "look", [at_cap, image_bytes("JPEG", size=(50, 200))])
        turns = await history_turns(client)
    first, second = turns[2]["images"]
    assert (first["bytes"], first["width"], first["height"]) == (16 * 1024, 100, 100)
    assert (second["format"], second["width"], second["height"]) == ("jpeg", 50, 200)


async def test_default_limits_on_the_default_server(client: GatewayClient) -> None:
    """The default server refuses 32,001 characters and nine images the same way."""
    before = await prime(client)
    await client.send({"type": "turn", "id": "long", "text": "x" * 32_001})
    await expect_error(client, {"too_large"}, "long")
    await client.send({"type": "turn", "id": "many", "images": [image_bytes(size=(8, 8))] * 9})
    await expect_error(client, {"too_large"}, "many")
    await assert_usable(client, before)


# ---- attachments that are not (allowed) images, or lie about their size ------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to claim width x height."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (10, 20, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    """A small GIF whose logical screen is patched to claim width x height."""
    data = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def noise_jpeg(seed: int = 0) -> bytes:
    image = Image.frombytes("RGB", (64, 64), random.Random(seed).randbytes(64 * 64 * 3))
    return encode(image, "JPEG", quality=90)


BAD_IMAGES: list[tuple[str, Callable[[], bytes], str]] = [
    ("empty", lambda: b"", "bad_image"),
    ("text", lambda: b"hello, this is plainly not an image", "bad_image"),
    ("pdf", lambda: b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n", "bad_image"),
    ("svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "bad_image"),
    ("zip", lambda: b"PK\x03\x04" + bytes(40), "bad_image"),
    ("bmp", lambda: encode(Image.new("RGB", (8, 8)), "BMP"), "bad_image"),
    ("tiff", lambda: encode(Image.new("RGB", (8, 8)), "TIFF"), "bad_image"),
    ("ico", lambda: encode(Image.new("RGB", (16, 16)), "ICO"), "bad_image"),
    ("ppm", lambda: encode(Image.new("RGB", (8, 8)), "PPM"), "bad_image"),
    ("png-signature-only", lambda: b"\x89PNG\r\n\x1a\n", "bad_image"),
    ("png-truncated-in-pixel-data", lambda: truncated(noise_png((64, 64))), "bad_image"),
    ("png-truncated-in-header", lambda: noise_png((64, 64))[:20], "bad_image"),
    ("png-bad-crc", lambda: noise_png((16, 16))[:29] + b"\x00\x00\x00\x00" + noise_png((16, 16))[33:], "bad_image"),
    ("jpeg-truncated-in-scan", lambda: truncated(noise_jpeg()), "bad_image"),
    ("jpeg-truncated-in-header", lambda: noise_jpeg()[:10], "bad_image"),
    ("webp-truncated", lambda: truncated(encode(Image.new("RGB", (64, 64), (1, 2, 3)), "WEBP", quality=100)), "bad_image"),
    ("gif-truncated", lambda: truncated(encode(Image.new("RGB", (64, 64), (1, 2, 3)), "GIF")), "bad_image"),
    ("png-declaring-30000x30000", lambda: png_declaring(30_000, 30_000), "too_large"),
    ("jpeg-declaring-60000x60000", lambda: jpeg_declaring(60_000, 60_000), "too_large"),
    ("gif-declaring-65535x65535", lambda: gif_declaring(65_535, 65_535), "too_large"),
    ("png-declaring-5000x4000", lambda: png_declaring(5000, 4000), "too_large"),
    ("webp-8000x8000-in-a-few-kb", lambda: encode(Image.new("RGB", (8000, 8000), (9, 9, 9)), "WEBP", lossless=True), "too_large"),
    ("png-5000x4000-legal-but-over-pixel-cap", lambda: encode(Image.new("RGB", (5000, 4000), (9, 9, 9)), "PNG"), "too_large"),
]


@pytest.mark.parametrize(("make", "code"), [pytest.param(m, c, id=n) for n, m, c in BAD_IMAGES])
async def test_bad_attachment_is_refused(client: GatewayClient, make: Callable[[], bytes], code: str) -> None:
    """Non-images, disallowed formats, truncated files and decompression bombs are refused before decoding."""
    data = make()
    assert len(data) <= 8 * 1024 * 1024  # every one fits the byte cap: it is the content that is refused
    await check_rejected(client, {"type": "turn", "id": "img", "text": "what is it?", "images": [data]}, {code}, "img")


async def test_bad_attachment_second_of_two_rejects_the_whole_turn(client: GatewayClient) -> None:
    """One bad image among good ones refuses the turn; the good one does not join the history."""
    good, bomb = image_bytes(), png_declaring(30_000, 30_000)
    await check_rejected(client, {"type": "turn", "id": "pair", "images": [good, bomb]}, {"too_large"}, "pair")


async def test_bomb_in_a_json_frame_is_refused(client: GatewayClient) -> None:
    """A JSON turn carrying a base64 decompression bomb gets `too_large` (answered in JSON) too."""
    bomb = base64.b64encode(png_declaring(30_000, 30_000)).decode()
    await check_rejected(client, json.dumps({"type": "turn", "id": "jb", "images": [bomb]}), {"too_large"}, "jb")


def animated_gif_cut_in_second_frame(extra: int) -> bytes:
    """An animated GIF cut `extra` bytes into its second frame: the first frame decodes, the rest is missing."""
    data = animated("GIF")
    second = data.index(b"\x21\xf9", data.index(b"\x2c") + 1)  # the second frame's graphic control block
    return data[: second + extra]


def gif_with_tail(tail: bytes) -> bytes:
    """A one-frame GIF whose trailer byte is replaced by `tail`: the start of a block that never comes."""
    return image_bytes("GIF", size=(24, 16))[:-1] + tail


DAMAGED_GIFS: list[tuple[str, Callable[[], bytes]]] = [
    ("animated-cut-in-second-frame-index-error", lambda: animated_gif_cut_in_second_frame(1)),
    ("animated-cut-in-second-frame-struct-error", lambda: animated_gif_cut_in_second_frame(11)),
    ("trailer-replaced-by-extension-introducer", lambda: gif_with_tail(b"\x21")),
    ("trailer-replaced-by-image-separator", lambda: gif_with_tail(b"\x2c\x00\x00")),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=n) for n, m in DAMAGED_GIFS])
async def test_gif_damaged_after_its_first_frame_is_refused_or_decoded(client: GatewayClient, make: Callable[[], bytes]) -> None:
    """A GIF whose first frame is whole but whose next block is cut off gets `bad_image` or a turn on its
    first frame; either way the connection stays open."""
    before = await prime(client)
    await client.start_turn("gif", "what is it?", [make()], max_tokens=3, **GREEDY)
    result = await client.collect("gif")
    if result.errors:
        assert [(e["code"], e["id"]) for e in result.errors] == [("bad_image", "gif")]
        await assert_usable(client, before)
    else:
        assert result.done is not None and (await history_turns(client))[-2]["images"][0]["format"] == "gif"


def corrupted_jpeg(seed: int) -> bytes:
    """Flip bytes in the middle of the entropy-coded scan data of a valid JPEG."""
    data = bytearray(noise_jpeg(seed))
    scan = data.index(b"\xff\xda") + 20
    middle = scan + (len(data) - scan) // 2
    rng = random.Random(seed)
    for offset in range(middle, middle + 32):
        data[offset] ^= rng.randrange(1, 256)
    return bytes(data)


@pytest.mark.parametrize("seed", range(5))
async def test_corrupted_jpeg_is_refused_or_decoded(client: GatewayClient, seed: int) -> None:
    """A JPEG with damaged scan data gets `bad_image` or, where the decoder copes, a normal turn; never a crash."""
    before = await prime(client)
    await client.start_turn("cj", "what is it?", [corrupted_jpeg(seed)], max_tokens=3, **GREEDY)
    result = await client.collect("cj")
    if result.errors:
        assert [(e["code"], e["id"]) for e in result.errors] == [("bad_image", "cj")] and result.done is None
        await assert_usable(client, before)
    else:
        assert result.done is not None and result.text == result.done["text"]
        turns = await history_turns(client)
        assert turns[:-2] == before and turns[-2]["images"][0]["format"] == "jpeg"


# ---- odd but legal images: accepted and normalised ------------------------------------------------------


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (40, 30), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def exif_rotated(orientation: int) -> bytes:
    image = Image.new("RGB", (64, 48), (1, 2, 3))
    exif = image.getexif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif)


def png16() -> bytes:
    return encode(Image.frombytes("I;16", (30, 20), random.Random(3).randbytes(30 * 20 * 2)), "PNG")


ODD_IMAGES: list[tuple[str, Callable[[], bytes], str, tuple[int, int]]] = [
    ("animated-gif", lambda: animated("GIF"), "gif", (40, 30)),
    ("animated-webp", lambda: animated("WEBP"), "webp", (40, 30)),
    ("cmyk-jpeg", lambda: encode(Image.new("CMYK", (32, 24), (10, 20, 30, 40)), "JPEG"), "jpeg", (32, 24)),
    ("16-bit-png", png16, "png", (30, 20)),
    ("exif-orientation-6", lambda: exif_rotated(6), "jpeg", (48, 64)),
    ("exif-orientation-8", lambda: exif_rotated(8), "jpeg", (48, 64)),
    ("exif-orientation-3", lambda: exif_rotated(3), "jpeg", (64, 48)),
    ("rgba-png", lambda: image_bytes("PNG", mode="RGBA", color=(0, 0, 0, 0)), "png", (64, 48)),
    ("palette-gif-with-transparency", lambda: encode(Image.new("P", (12, 10)), "GIF", transparency=0), "gif", (12, 10)),
    ("greyscale-jpeg", lambda: image_bytes("JPEG", mode="L", color=128), "jpeg", (64, 48)),
]


@pytest.mark.parametrize(("make", "fmt", "size"), [pytest.param(m, f, s, id=n) for n, m, f, s in ODD_IMAGES])
async def test_odd_image_is_accepted_and_normalised(
    client: GatewayClient, make: Callable[[], bytes], fmt: str, size: tuple[int, int]
) -> None:
    """Animated, CMYK, 16-bit, EXIF-rotated and transparent images make a normal turn; `history` shows
    the normalised size (a quarter-turn EXIF orientation swaps width and height)."""
    data = make()
    result = await good_turn(client, "odd", "what is it?", [data])
    assert result.accepted is not None and result.accepted["prompt_tokens"] > 0
    (user, assistant) = await history_turns(client)
    (image,) = user["images"]
    assert (image["format"], image["width"], image["height"], image["bytes"]) == (fmt, *size, len(data))
    assert assistant["text"] == result.text


# ---- special-token text --------------------------------------------------------------------------------


async def test_text_containing_the_image_placeholder_is_not_a_bug(client: GatewayClient) -> None:
    """User text that spells the image placeholder runs as text (or is refused as `invalid_field`), never `internal`."""
    before = await prime(client)
    result = await client.turn("ph", "what is <|image|>?", max_tokens=3, **GREEDY)
    if result.errors:
        assert [(e["code"], e["id"]) for e in result.errors] == [("invalid_field", "ph")]
        await assert_usable(client, before)
    else:
        assert result.done is not None and (await history_turns(client))[:-2] == before


async def test_text_cannot_forge_special_tokens(server: RunningServer) -> None:
    """'<|user|>' typed by a user is several text tokens, not the one role-tag token."""
    counts = {}
    for text in ("", "<|user|>", "<|endoftext|>", "<|begin_of_image|>"):
        async with GatewayClient(server.ws_url) as client:
            result = await client.turn("f", text, max_tokens=1, **GREEDY)
            assert result.accepted is not None
            counts[text] = result.accepted["prompt_tokens"]
    assert all(counts[text] - counts[""] > 1 for text in counts if text), counts


# ---- property: whatever arrives, the server answers with valid frames and never closes ---------------


class Prober:
    """Drives one live connection: sends a message, then a ping, and checks everything up to the pong.
    A turn that happens to be accepted is cancelled, and its `done` must come exactly once."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.sent = 0
        self.running: str | None = None
        self.deltas: list[str] = []
        self.accepted = 0
        self.done = 0
        self.errors: dict[str, int] = {}

    def exchange(self, message: bytes | str) -> None:
        self.ws.send(message)
        self.sent += 1
        probe = f"\u2603probe-{self.sent}"
        self.ws.send(packb({"type": "ping", "id": probe}))
        self.read_until(lambda f: f["type"] == "pong" and f["id"] == probe)
        if self.running is not None:
            self.ws.send(packb({"type": "cancel", "id": self.running}))
            self.read_until(lambda f: self.running is None)

    def read_until(self, stop: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            try:
                data = self.ws.recv(timeout=20)
            except websockets.ConnectionClosed as exc:
                pytest.fail(f"the server closed the connection: {exc}")
            except TimeoutError:
                pytest.fail("the server stopped answering")
            frame = self.check(data)
            if stop(frame):
                return frame

    def check(self, data: bytes | str) -> dict[str, Any]:
        p.decode_server(data)  # every frame the server sends is one of its own, fully valid frames
        frame: dict[str, Any] = json.loads(data) if isinstance(data, str) else msgpack.unpackb(data, raw=False)
        kind = frame["type"]
        assert kind != "ready", "a second `ready`"
        if kind == "error":
            assert frame["code"] in ERROR_CODES and frame["code"] not in ("internal", "generation"), frame
            self.errors[frame["code"]] = self.errors.get(frame["code"], 0) + 1
        elif kind == "accepted":
            assert self.running is None, "a turn accepted while another runs"
            self.running, self.deltas = frame["id"], []
            self.accepted += 1
        elif kind in ("token", "queued"):
            assert frame["id"] == self.running, frame
            self.deltas.append(frame.get("text", ""))
        elif kind == "done":
            assert frame["id"] == self.running, "a `done` for no running turn (or a second one)"
            assert "".join(self.deltas) == frame["text"]
            self.running = None
            self.done += 1
        return frame


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
)
KEYS = st.sampled_from(["type", "id", "text", "images", "options", "max_tokens", "stop"]) | SCALARS
OBJECTS = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=16
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)

SAMPLE_IMAGES = [image_bytes(fmt, size=(24, 16)) for fmt in ("PNG", "JPEG", "WEBP", "GIF")]
SAMPLE_IMAGES += [animated("GIF"), animated("WEBP")]


def mutate(base: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(base)
    for offset, value in flips:
        data[offset % len(data)] ^= value
    return bytes(data[:cut] if cut is not None else data)


IMAGES = st.builds(
    mutate,
    st.sampled_from(SAMPLE_IMAGES),
    st.lists(st.tuples(st.integers(0, 4096), st.integers(1, 255)), max_size=6),
    st.none() | st.integers(0, 2048),
)
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(-1, 6) | OBJECTS,
        "top_p": st.floats(-0.5, 1.5),
        "top_k": st.integers(-5, 200_000),
        "max_tokens": st.integers(-2, 5000) | OBJECTS,
        "repetition_penalty": st.floats(-1, 11),
        "stop": st.lists(st.text(max_size=130), max_size=10),
        "seed": st.integers(-1, 2**64 - 1),
        "ignore_eos": st.booleans(),
        "bogus": OBJECTS,
    },
)
NEAR_FRAMES = st.fixed_dictionaries(
    {"type": st.sampled_from([*p.CLIENT_TYPES, "bogus", "done", ""])},
    optional={
        "id": st.text(max_size=70) | OBJECTS,
        "text": st.text(max_size=60) | OBJECTS,
        "images": st.lists(IMAGES, max_size=2) | OBJECTS,
        "options": OPTIONS | OBJECTS,
        "include_images": st.booleans() | OBJECTS,
        "system": st.none() | st.text(max_size=40),
        "temperature": st.floats(-1, 6),
        "max_tokens": st.integers(-2, 5000),
        "stop": st.lists(st.text(max_size=130), max_size=10),
        "extra": OBJECTS,
    },
)


VALID_OPTIONS = st.fixed_dictionaries(
    {"max_tokens": st.integers(1, 8)},
    optional={
        "temperature": st.floats(0, 5),
        "top_p": st.floats(0.001, 1),
        "top_k": st.integers(0, 100_000),
        "repetition_penalty": st.floats(0.001, 10),
        "stop": st.lists(st.text(min_size=1, max_size=128), max_size=8),
        "seed": st.integers(0, 2**63 - 1),
        "ignore_eos": st.booleans(),
    },
)
VALID_TURNS = st.fixed_dictionaries(
    {"type": st.just("turn"), "id": st.text(min_size=1, max_size=64), "options": VALID_OPTIONS},
    optional={"text": st.text(max_size=80), "images": st.lists(IMAGES, max_size=2)},
)


def as_json(frame: dict[str, Any]) -> str:
    def default(value: Any) -> Any:
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        return repr(value)

    return json.dumps(frame, default=default, skipkeys=True)


# JSON may escape lone UTF-16 surrogates ("\ud800"), which no msgpack str can hold.
SURROGATES = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
SURROGATE_FRAMES = st.builds(
    lambda kind, id_, text: json.dumps({"type": kind, "id": id_, "text": text}),
    st.sampled_from(p.CLIENT_TYPES),
    SURROGATES | st.text(max_size=8),
    SURROGATES | st.text(max_size=8),
)
MESSAGES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200),
    OBJECTS.map(packb),
    JSON_VALUES.map(json.dumps),
    NEAR_FRAMES.map(packb),
    NEAR_FRAMES.map(as_json),
    VALID_TURNS.map(packb),
    VALID_TURNS.map(as_json),
    SURROGATE_FRAMES,
)


def test_random_messages_never_break_the_connection(lenient: RunningServer) -> None:
    """~200 arbitrary byte strings, texts, msgpack objects and near-valid frames on ONE connection: each
    is answered with valid frames (an `error`, or whatever the frame asked for), the connection stays
    open, every accepted turn ends with one `done` equal to its stream, and a normal turn then works."""
    with connect(lenient.ws_url, subprotocols=["gateway.msgpack"], max_size=2**26, ping_interval=None) as ws:  # type: ignore[list-item]
        ready = msgpack.unpackb(ws.recv(timeout=10), raw=False)
        assert ready["type"] == "ready"
        prober = Prober(ws)

        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(message=MESSAGES)
        def answer_every_message(message: bytes | str) -> None:
            prober.exchange(message)

        answer_every_message()
        # whatever the examples configured, a plain greedy turn still runs to its end
        ws.send(packb({"type": "configure", "system": "", "stop": None, "ignore_eos": False}))
        prober.read_until(lambda f: f["type"] in ("configured", "error"))
        ws.send(packb({"type": "turn", "id": "final", "text": "hello", "options": {"max_tokens": 3, "temperature": 0}}))
        done = prober.read_until(lambda f: f["type"] == "done" or (f["type"] == "error" and f["id"] == "final"))
        assert done["type"] == "done" and done["id"] == "final"
        ws.send(packb({"type": "history", "id": "hist"}))
        history = prober.read_until(lambda f: f["type"] == "history")
        assert history["turns"][-1]["text"] == done["text"] and history["turns"][-1]["id"] == "final"
    assert prober.sent >= 200 and prober.errors, (prober.sent, prober.errors)
    assert prober.accepted == prober.done and prober.running is None
    print(f"\nproperty test: {prober.sent} messages, {prober.accepted} turns accepted, errors {prober.errors}")
    wait_for(lambda: ready["session"] not in lenient.app.state.ws.connections)


# ---- invariant: abuse on one connection does not reach another ------------------------------------------


async def test_abuse_does_not_disturb_a_concurrent_connection(lenient: RunningServer) -> None:
    """While one connection sends every malformed message above, another holds a five-turn chat: each
    turn ends with exactly one `done`, its streamed text equals `done.text` and the stored reply."""
    abuse: list[bytes | str | dict[str, Any]] = [m for _, m, _, _ in MALFORMED]
    abuse += [f for _, f, _, _ in SCHEMA]
    abuse += [{"type": "turn", "id": name, "images": [make()]} for name, make, _ in BAD_IMAGES if "8000" not in name]
    async with GatewayClient(lenient.ws_url) as calm, GatewayClient(lenient.ws_url) as noisy:

        async def chat() -> list[TurnResult]:
            results = []
            for i in range(5):
                results.append(await calm.turn(f"calm{i}", f"tell me about {i}", max_tokens=12, **GREEDY))
                await asyncio.sleep(0.01)
            return results

        async def attack() -> list[dict[str, Any]]:
            answers = []
            for payload in abuse:
                await send_raw(noisy, payload)
                answers.append(await asyncio.wait_for(noisy.recv(), 10))
            return answers

        results, answers = await asyncio.gather(chat(), attack())
        pong = await calm.request({"type": "ping", "id": "end"})  # nothing stray (no second `done`) before it
        turns = await history_turns(calm)
        await assert_usable(noisy, await history_turns(noisy))
    assert pong.pop("seq") > 0 and pong == {"type": "pong", "id": "end"}
    assert all(a["type"] == "error" and a["code"] != "internal" for a in answers), answers
    assert len(answers) == len(abuse)
    for i, result in enumerate(results):
        assert result.errors == [] and result.done is not None and result.done["finish_reason"] in ("length", "stop")
        assert result.text == result.done["text"] == turns[2 * i + 1]["text"]
        assert turns[2 * i]["id"] == turns[2 * i + 1]["id"] == f"calm{i}"
    assert len(turns) == 10
