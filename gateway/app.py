"""The application factory: routes, static web client, the Host guard, and a lifespan that loads and frees the engine."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from gateway import redact
from gateway.config import Settings
from gateway.core.runtime import Runtime, runtime_of
from gateway.core.store.open import open_store
from gateway.core.turns import TurnService
from gateway.edge.auth import bearer_accepted
from gateway.edge.hosts import HostGuard, host_policy
from gateway.edge.tokens import keys_of
from gateway.engine.contract import Engine
from gateway.metrics import Metrics, ServiceGauges
from gateway.openai import adapters as openai_adapters, routes as openai
from gateway.status import status_endpoint
from gateway.ws.endpoint import websocket_endpoint
from gateway.ws.hub import SessionHub
from gateway.ws.state import WsState

log = logging.getLogger("gateway.app")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

EngineFactory = Callable[[Settings], Engine]


def create_app(settings: Settings, engine: Engine | None = None, engine_factory: EngineFactory | None = None) -> Starlette:
    """Build the app around a ready engine, or one the factory builds in the background after start-up.
    (`gateway serve` loads its engine before it listens, so a model that cannot load stops it at once.)"""
    redact.install(*settings.secrets)  # every logger, at every level

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime, ws = Runtime(settings, metrics), WsState()
        ws.token_keys = keys_of(settings.token_secret, settings.token_secret_previous, time.time(), settings.token_max_ttl_s)
        app.state.runtime, app.state.ws = runtime, ws  # the app's whole state: two typed objects
        loading: asyncio.Task[None] | None = None
        if engine is not None:
            engine.start()
            _serve_engine(runtime, ws, engine)
        elif engine_factory is not None:
            loading = asyncio.create_task(_load(runtime, ws, engine_factory))
        try:
            yield
        finally:
            if loading is not None:
                loading.cancel()
            if runtime.turns is not None:
                await runtime.turns.settle()  # turns' ends waiting for their store writes
            if ws.hub is not None:
                await ws.hub.close()
            if runtime.turns is not None:
                runtime.turns.close()
            if runtime.engine is not None:
                await asyncio.to_thread(runtime.engine.stop)
            # What start-up froze goes back to the collector: a process that serves again (the tests start
            # many servers in one) must not keep a stopped server's reference cycles for ever.
            gc.unfreeze()

    metrics = Metrics()
    routes = [
        Route("/healthz", healthz),
        Route("/metrics", metrics_endpoint),
        Route("/status", status_endpoint),
        *openai.routes(),
        *openai_adapters.routes(),
        WebSocketRoute("/ws", websocket_endpoint),
    ]
    if WEB_DIR.is_dir():
        routes.append(Route("/", lambda request: RedirectResponse("/web/index.html")))
        routes.append(Mount("/web", StaticFiles(directory=WEB_DIR, html=True), name="web"))
    guard = Middleware(HostGuard, policy=host_policy(settings))
    return Starlette(routes=routes, middleware=[guard], lifespan=lifespan)


async def _load(runtime: Runtime, ws: WsState, factory: EngineFactory) -> None:
    try:
        engine = await asyncio.to_thread(factory, runtime.settings)
    except Exception as exc:
        log.exception("model failed to load")
        runtime.load_error = str(exc)
        return
    await asyncio.to_thread(engine.start)
    _serve_engine(runtime, ws, engine)
    log.info("model %s ready", engine.model_id)


def _serve_engine(runtime: Runtime, ws: WsState, engine: Engine) -> None:
    """From here on both front ends reach the engine through one turn service."""
    turns = runtime.serve(engine)
    ws.hub = SessionHub(runtime.settings, turns, open_store(runtime.settings))
    ws.hub.start()
    runtime.metrics.watch_engine(engine.load)
    runtime.metrics.adapters.watch(lambda: len(engine.adapters))
    runtime.metrics.watch_service(_gauges(turns, ws.hub))
    settle_heap()


def settle_heap() -> None:
    """Start-up's objects (modules, the model, the tokenizer: about 490k on the demo model) leave the cyclic
    collector's sight: a full collection walked them all, 250 ms of CPU in whichever event-loop callback set it
    off (the 650-780 ms stalls of the revived-session attack on a loaded machine); it now walks what came since.
    Start-up's garbage is collected first, once, before anything is served."""
    gc.collect()
    gc.freeze()


def _gauges(turns: TurnService, hub: SessionHub) -> ServiceGauges:
    return ServiceGauges(
        in_flight=lambda: turns.in_flight,
        image_bytes=lambda: turns.images.total,
        image_bytes_limit=turns.images.max_bytes,
        sessions=lambda: len(hub.live),
        sessions_detached=lambda: len(hub.detached),
        store_healthy=lambda: hub.guard.healthy,
    )


async def metrics_endpoint(request: Request) -> Response:
    runtime = runtime_of(request.app)
    settings = runtime.settings
    if not settings.metrics_public and not bearer_accepted(request.headers.get("authorization"), settings.api_key):
        return JSONResponse({"error": "missing or incorrect API key"}, 401, headers={"WWW-Authenticate": "Bearer"})
    body, content_type = runtime.metrics.render()
    return Response(body, media_type=content_type)


async def healthz(request: Request) -> Response:
    runtime = runtime_of(request.app)
    if runtime.engine is not None:
        return JSONResponse({"status": "ok", "model": runtime.engine.model_id})
    status = "failed" if runtime.load_error else "loading"
    return JSONResponse({"status": status}, status_code=503)
