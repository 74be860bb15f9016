"""The application factory: routes, static web client, the Host guard, and a lifespan that loads and frees the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from gateway import openai, redact
from gateway.auth import bearer_accepted
from gateway.config import Settings
from gateway.engine.types import Engine
from gateway.hosts import HostGuard, host_policy
from gateway.hub import SessionHub
from gateway.metrics import Metrics, ServiceGauges
from gateway.status import status_endpoint
from gateway.store.open import open_store
from gateway.turns import TurnService
from gateway.ws import ConnectionCounter, websocket_endpoint

log = logging.getLogger("gateway.app")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

EngineFactory = Callable[[Settings], Engine]


def create_app(settings: Settings, engine: Engine | None = None, engine_factory: EngineFactory | None = None) -> Starlette:
    """Build the app around a ready engine, or one the factory builds in the background after start-up.
    (`gateway serve` loads its engine before it listens, so a model that cannot load stops it at once.)"""
    redact.install(settings.api_key, settings.upstream_api_key)  # every logger, at every level

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.engine = None
        app.state.turns = None  # the turn service, once the engine is ready
        app.state.hub = None  # the live sessions, once the engine is ready
        app.state.load_error = None
        app.state.connections = {}  # session id -> Connection, for draining and inspection
        app.state.connection_counter = ConnectionCounter()
        app.state.metrics = metrics
        app.state.draining = False
        loading: asyncio.Task[None] | None = None
        if engine is not None:
            engine.start()
            _serve_engine(app, engine)
        elif engine_factory is not None:
            loading = asyncio.create_task(_load(app, settings, engine_factory))
        try:
            yield
        finally:
            if loading is not None:
                loading.cancel()
            if app.state.hub is not None:
                await app.state.hub.close()
            if app.state.turns is not None:
                app.state.turns.close()
            if app.state.engine is not None:
                await asyncio.to_thread(app.state.engine.stop)

    metrics = Metrics()
    routes = [
        Route("/healthz", healthz),
        Route("/metrics", metrics_endpoint),
        Route("/status", status_endpoint),
        *openai.routes(),
        WebSocketRoute("/ws", websocket_endpoint),
    ]
    if WEB_DIR.is_dir():
        routes.append(Route("/", lambda request: RedirectResponse("/web/index.html")))
        routes.append(Mount("/web", StaticFiles(directory=WEB_DIR, html=True), name="web"))
    guard = Middleware(HostGuard, policy=host_policy(settings))
    return Starlette(routes=routes, middleware=[guard], lifespan=lifespan)


async def _load(app: Starlette, settings: Settings, factory: EngineFactory) -> None:
    try:
        engine = await asyncio.to_thread(factory, settings)
    except Exception as exc:
        log.exception("model failed to load")
        app.state.load_error = str(exc)
        return
    await asyncio.to_thread(engine.start)
    _serve_engine(app, engine)
    log.info("model %s ready", engine.model_id)


def _serve_engine(app: Starlette, engine: Engine) -> None:
    """From here on both front ends reach the engine through one turn service."""
    app.state.turns = TurnService(app.state.settings, engine, app.state.metrics)
    app.state.hub = SessionHub(app.state.settings, app.state.turns, open_store(app.state.settings))
    app.state.hub.start()
    app.state.metrics.watch_engine(engine.load)
    app.state.metrics.watch_service(_gauges(app.state.turns, app.state.hub))
    app.state.engine = engine


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
    settings: Settings = request.app.state.settings
    if not settings.metrics_public and not bearer_accepted(request.headers.get("authorization"), settings.api_key):
        return JSONResponse({"error": "missing or incorrect API key"}, 401, headers={"WWW-Authenticate": "Bearer"})
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)


async def healthz(request: Request) -> Response:
    state = request.app.state
    if state.engine is not None:
        return JSONResponse({"status": "ok", "model": state.engine.model_id})
    status = "failed" if state.load_error else "loading"
    return JSONResponse({"status": status}, status_code=503)
