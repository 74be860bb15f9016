"""Running the app under uvicorn, with a graceful drain on SIGTERM/SIGINT before uvicorn's own shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from gateway.config import Settings
from gateway.core.runtime import runtime_of
from gateway.edge.door import Door, DoorProtocol, throttle_accept_errors
from gateway.errors import CloseCode
from gateway.logs import uvicorn_config
from gateway.ws.deflate import GatewayWebSocketProtocol
from gateway.ws.state import ws_state_of

log = logging.getLogger("gateway.server")


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: refuse new connections and turns, let running turns finish for
    up to `drain_timeout_s`, close every WebSocket with 1001 after a `closing` frame, then let uvicorn
    shut down. (uvicorn alone closes WebSockets with 1012 at once, cutting turns mid-stream.)
    A second signal skips the wait."""

    def __init__(self, config: uvicorn.Config, app: Starlette, settings: Settings) -> None:
        super().__init__(config)
        self.app = app
        self.drain_timeout_s = settings.drain_timeout_s
        self.accept_error_log_interval_s = settings.accept_error_log_interval_s
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        throttle_accept_errors(asyncio.get_running_loop(), self.accept_error_log_interval_s)
        await super().startup(sockets)
        if sockets is not None and self.started:  # uvicorn leaves this line to a supervisor when handed sockets
            self._log_started_message(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is None and getattr(self.app.state, "ws", None) is not None:
            self._drain = asyncio.get_event_loop().create_task(self.drain())
            return
        super().handle_exit(sig, frame)

    async def drain(self) -> None:
        runtime, state = runtime_of(self.app), ws_state_of(self.app)
        runtime.drain.on = True  # both front ends: no new connections, no new turns
        log.info("draining: %d connections, up to %.0f s for running turns", len(state.connections), self.drain_timeout_s)
        deadline = time.monotonic() + self.drain_timeout_s
        while runtime.turns is not None and runtime.turns.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(state.connections.values()):
            if connection.active is not None:
                connection.active.handle.cancel()
        await asyncio.sleep(0.1)  # let the cancelled turns' `done` frames go out
        for connection in list(state.connections.values()):
            connection.stop(CloseCode.GOING_AWAY, "server shutting down")
        wait_until = time.monotonic() + 3
        while state.connections and time.monotonic() < wait_until:
            await asyncio.sleep(0.02)
        super().handle_exit(signal.SIGTERM, None)


def make_server(app: Starlette, settings: Settings, **overrides: Any) -> DrainingServer:
    """A uvicorn server for `app` with the door's bounds, the WebSocket limits the protocol needs and a
    draining shutdown."""
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_config(settings),  # JSON lines for uvicorn's access and error logs too
        http=DoorProtocol.bound_to(Door.from_settings(settings)),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # deflate, but never megabytes of images on the event loop
        ws=GatewayWebSocketProtocol.bound_to(settings.max_compressed_frame_bytes),
        ws_max_size=settings.max_frame_bytes,
        ws_max_queue=settings.max_inbound_queue,  # a flooding client waits on TCP, not on our memory
        ws_ping_interval=settings.keepalive_interval_s,
        ws_ping_timeout=settings.keepalive_timeout_s,
        timeout_graceful_shutdown=10,
    )
    config = uvicorn.Config(app, **(options | overrides))
    return DrainingServer(config, app, settings)


def serve(app: Starlette, settings: Settings, listening: socket.socket | None = None) -> None:
    """Serve until shut down; on `listening` when given (bound before the model loaded), else on the settings' address."""
    make_server(app, settings).run(sockets=[listening] if listening is not None else None)
