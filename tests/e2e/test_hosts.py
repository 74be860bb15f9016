"""DNS rebinding tried on a real server, over HTTP and WebSocket: a rebound Host is refused before anything else."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests

from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server

REBOUND = "rebind.attacker.example"


@pytest.fixture(scope="module")
def guarded(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings())
    yield running
    running.stop()


def test_rebound_host_is_refused_over_http(guarded: RunningServer) -> None:
    """A request carrying a rebound name in Host gets 400 on every route; the loopback names pass."""
    for path in ("/healthz", "/v1/models", "/web/index.html", "/metrics"):
        response = requests.get(guarded.http_url + path, headers={"Host": f"{REBOUND}:{guarded.port}"}, timeout=5)
        assert response.status_code == 400, path
    assert requests.get(guarded.http_url + "/healthz", headers={"Host": f"localhost:{guarded.port}"}, timeout=5).ok


def handshake(running: RunningServer, host: str, origin: str | None = None) -> bytes:
    head = (
        b"GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" % host.encode()
    )
    if origin is not None:
        head += b"Origin: %s\r\n" % origin.encode()
    return status_line(running.port, head + b"\r\n")


def status_line(port: int, data: bytes) -> bytes:
    """Send `data`; the answer's first line, as soon as it has come: a 101 leaves the connection open, so
    reading to the end would wait for a timeout (and a short one failed on a loaded machine). The 60 s
    socket timeout is a hang guard only."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n" not in received and (chunk := sock.recv(65536)):
            received += chunk
    return received.split(b"\r\n", 1)[0]


def test_rebound_host_is_refused_over_websocket(guarded: RunningServer) -> None:
    """DNS rebinding over WebSocket: Origin and Host both the attacker's name is refused; same origin
    on a loopback name upgrades."""
    attacker = f"{REBOUND}:{guarded.port}"
    assert handshake(guarded, attacker, f"http://{attacker}") == b"HTTP/1.1 400 Bad Request"
    assert handshake(guarded, attacker) == b"HTTP/1.1 400 Bad Request"
    local = f"localhost:{guarded.port}"
    assert handshake(guarded, local, f"http://{local}") == b"HTTP/1.1 101 Switching Protocols"
