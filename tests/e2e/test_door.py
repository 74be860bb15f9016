"""The door on a real server over raw sockets: head and body deadlines, 431 for oversized heads on every
path, the cap on sockets still sending their first head, and throttled accept() failures."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import requests
import websockets

from gateway.app import create_app
from gateway.config import Settings
from gateway.edge.door import DoorProtocol
from gateway.engine.scripted import ScriptedEngine
from gateway.server import make_server
from gateway.startup import claim_port
from tests.conftest import DemoDirs, RunningServer, free_port, start_server

HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def door(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    settings = Settings(header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S)
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def patient(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """A head deadline only a hang reaches (a loaded machine may pause a client between two sends), and a
    small cap on sockets still sending their first head."""
    running = start_server(demo_dirs.model, Settings(header_timeout_s=60, max_pending_handshakes=8))
    yield running
    running.stop()


def ws_head(port: int, extra: bytes = b"") -> bytes:
    return (
        (
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" % port
        )
        + extra
        + b"\r\n"
    )


def exchange(port: int, data: bytes, timeout_s: float = 60.0) -> bytes:
    """Send `data`, then read until the server closes (or the timeout, marked in the result). The default
    timeout is a hang guard: an answer that closes ends the read as soon as it has come."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            received += b"<timeout>"
        return received


def closed_after(sock: socket.socket, timeout_s: float) -> float | None:
    """Seconds until the server closes `sock` (reading nothing), or None if it stays open."""
    started = time.monotonic()
    sock.settimeout(timeout_s)
    try:
        data = sock.recv(1024)
    except TimeoutError:
        return None
    except ConnectionResetError:
        data = b""
    assert data == b"", data
    return time.monotonic() - started


def stalled(port: int, count: int, partial: bytes = b"GET /ws HT") -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(partial)
        sockets.append(sock)
    return sockets


# ---- the head meter, without a network ------------------------------------------------------------


# ---- deadlines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("partial", [b"", b"GET /ws HT", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
def test_stalled_heads_are_closed_after_the_header_timeout(door: RunningServer, partial: bytes) -> None:
    """Sockets that send nothing, half a request line or headers without their end are closed by the
    server, with nothing sent back (the wait is a hang guard, not a measure: the close is the guarantee)."""
    sockets = stalled(door.port, 20, partial)
    try:
        waits = [closed_after(sock, HEADER_TIMEOUT_S + 60) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert all(wait is not None for wait in waits)


def test_stalled_body_gets_408(door: RunningServer) -> None:
    """A POST whose body stops arriving is answered 408 (the body deadline's own answer) and closed."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    answer = exchange(door.port, head + b"Content-Length: 100\r\n\r\n" + b'{"model"', timeout_s=BODY_TIMEOUT_S + 60)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_kept_alive_connection_serves_many_requests(door: RunningServer) -> None:
    """The deadlines follow each request of a kept-alive connection: bodies and heads in turn."""
    with requests.Session() as session:
        for _ in range(5):
            assert session.get(f"{door.http_url}/healthz", timeout=5).status_code == 200
            response = session.post(f"{door.http_url}/v1/chat/completions", json={"model": "x"}, timeout=5)
            assert response.status_code == 400


# ---- head size --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [b"X-Big: " + b"a" * 9216 + b"\r\n", b"".join(b"X-H%d: v\r\n" % i for i in range(2000))],
    ids=["9KiB-line", "2000-headers"],
)
@pytest.mark.parametrize("path", ["/ws", "/healthz"])
def test_oversized_head_gets_431_on_every_path(door: RunningServer, extra: bytes, path: str) -> None:
    """A 9 KiB header line or 2,000 headers get 431, on the WebSocket path as on any other."""
    head = ws_head(door.port, extra).replace(b"/ws", path.encode(), 1)
    assert exchange(door.port, head).startswith(b"HTTP/1.1 431 ")


def test_upgrade_over_the_websocket_parser_limits_gets_431(demo_dirs: DemoDirs) -> None:
    """With the door's bounds raised past the websockets parser's own, an upgrade it would drop
    unanswered still gets 431."""
    running = start_server(demo_dirs.model, Settings(max_header_bytes=64 * 1024, max_headers=1000))
    try:
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        assert exchange(running.port, ws_head(running.port, many)).startswith(b"HTTP/1.1 431 ")
        assert requests.get(f"{running.http_url}/healthz", headers={"X-Big": "a" * 9000}, timeout=5).status_code == 200
    finally:
        running.stop()


def test_ordinary_handshake_still_upgrades(patient: RunningServer) -> None:
    """A normal upgrade request (sent in pieces) gets 101."""
    with socket.create_connection(("127.0.0.1", patient.port), timeout=60) as sock:
        head = ws_head(patient.port)
        sock.sendall(head[:20])
        time.sleep(0.1)
        sock.sendall(head[20:])
        assert sock.recv(1024).startswith(b"HTTP/1.1 101 ")


# ---- sockets still sending their first head ------------------------------------------------------


def test_past_max_pending_the_oldest_are_closed_and_clients_still_served(patient: RunningServer) -> None:
    """Past max_pending_handshakes the oldest stalled sockets are closed at once (long before the head
    deadline), and a client that sends its request at once is served."""
    running = patient
    first = stalled(running.port, 8)
    time.sleep(0.2)
    second = stalled(running.port, 8)
    try:
        assert all(closed_after(sock, 60) is not None for sock in first)  # a hang guard: each read ends at the close
        assert requests.get(f"{running.http_url}/healthz", timeout=5).status_code == 200
        assert closed_after(second[-1], 0.3) is None  # the newest are still waiting for their heads
    finally:
        for sock in first + second:
            sock.close()


# ---- accept() failures --------------------------------------------------------------------------


def test_descriptor_exhaustion_logs_a_line_not_a_flood(tmp_path: object) -> None:
    """At the open-files limit a real server logs a line or two, not thousands of tracebacks a second."""
    port = free_port()
    env = {**os.environ, "GATEWAY_HEADER_TIMEOUT_S": "30", "GATEWAY_MAX_PENDING_HANDSHAKES": "1000"}
    command = [sys.executable, "-m", "gateway.cli", "serve", "--engine", "scripted", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    )
    sockets: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _answers(port):
            time.sleep(0.2)
        sockets = stalled(port, 100, b"GET / HT")
        time.sleep(2)
    finally:
        for sock in sockets:
            sock.close()
        process.terminate()
        _, err = process.communicate(timeout=30)
    log = err.decode()
    assert "accept() failed" in log and "Traceback" not in log
    assert len(log) < 5000, log[-2000:]


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_connections_on_a_port_claimed_before_loading_send_without_nagle(monkeypatch: pytest.MonkeyPatch) -> None:
    """`gateway serve` binds its port before the model loads; the sockets it accepts say proto 0, so asyncio leaves
    Nagle on. The door turns it off: a token frame written right after `accepted` never waits for a delayed ACK."""
    seen: list[tuple[int, int]] = []  # each accepted socket's proto, and TCP_NODELAY once the door had it
    original = DoorProtocol.connection_made

    def recording(self: DoorProtocol, transport: asyncio.Transport) -> None:
        original(self, transport)
        sock = transport.get_extra_info("socket")
        seen.append((sock.proto, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))

    monkeypatch.setattr(DoorProtocol, "connection_made", recording)
    port = free_port()
    settings = Settings(port=port, host="127.0.0.1", session_store="memory")
    server = make_server(create_app(settings, engine=ScriptedEngine()), settings, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [claim_port("127.0.0.1", port)]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)

        async def one_turn() -> list[str]:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.recv()  # ready
                await ws.send(json.dumps({"type": "turn", "id": "t", "text": "hi", "options": {"max_tokens": 3}}))
                kinds: list[str] = []
                while not kinds or kinds[-1] != "done":
                    kinds.append(json.loads(await ws.recv())["type"])
                    assert kinds[-1] != "error", kinds  # else the loop would wait for a done that never comes
                return kinds

        kinds = asyncio.run(one_turn())
        assert kinds[0] == "accepted" and "token" in kinds
    finally:
        server.should_exit = True
        thread.join(10)
    assert seen and all(proto == 0 for proto, _ in seen)  # what asyncio alone would leave with Nagle on
    assert all(no_delay for _, no_delay in seen)
