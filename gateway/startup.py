"""What `gateway serve` does before it listens: find the model directory, name it, and load the engine."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway import logs
from gateway.config import Settings
from gateway.core.store.base import SessionStore
from gateway.engine.contract import Engine
from gateway.errors import one_line

if TYPE_CHECKING:  # torch is imported only where the local engine is built
    from gateway.engine.local.engine import LocalEngine
    from gateway.engine.local.loader import LoadedModel

log = logging.getLogger("gateway.startup")

DEMO_MODEL_ID = "gateway-demo"
DEMO_MARKER = "gateway_demo.json"  # written into every demo model directory


class StartupError(Exception):
    """The model or an adapter cannot be served; the message says why, in one line."""


def parse_adapters(text: str) -> dict[str, str]:
    """ "a=/x,b=/y" -> {"a": "/x", "b": "/y"}; a malformed item is a ValueError naming it."""
    adapters: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, directory = item.partition("=")
        if not sep or not name.strip() or not directory.strip():
            raise ValueError(f"an adapter is NAME=DIR, got {item!r}")
        adapters[name.strip()] = directory.strip()
    return adapters


def claim_port(host: str, port: int) -> socket.socket:
    """The listening address, bound before the model loads (seconds on the demo, minutes on a real
    model), so a busy port is said at once; uvicorn serves on this socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart may reuse it at once
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        raise StartupError(f"cannot listen on {shown}:{port}: {exc.strerror or one_line(exc)}") from exc
    return sock


def upstream_base_url(url: str) -> str:
    """An upstream's base URL as the engine wants it (no /v1: it appends /v1/...); the base URL as vLLM
    and the OpenAI SDK print it (`http://HOST:8000/v1`) is taken too. Anything else is a ValueError
    saying exactly what to pass."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    path = path[: -len("/v1")] if path.endswith("/v1") else path
    base = f"{parts.scheme}://{parts.netloc}{path}"
    example = f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else "http://HOST:8000"
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment or "/v1/" in path + "/":
        raise ValueError(f"--upstream {url!r}: pass the server's base URL, such as {example} or {example}/v1")
    return base


def model_dir(path: str) -> Path:
    """The model directory `path` names; the root `gateway demo-model DIR` writes stands for its model."""
    source = Path(path).expanduser()
    holds_model = (source / "config.json").exists() or (source / "adapter_config.json").exists()
    if not holds_model and (source / "model" / DEMO_MARKER).exists():
        return source / "model"
    return source


def model_id_of(source: Path, base_model: str | None = None) -> str:
    """The id clients see: a demo model is `gateway-demo`, any other model its directory's name, and
    an adapter `BASE:ADAPTER` (its base's id and its own directory's name), as OpenAI names fine-tunes."""
    config = source / "adapter_config.json"
    if config.exists():
        base = base_model or _adapter_base(config)
        return f"{model_id_of(Path(base)) if base else 'adapter'}:{source.resolve().name}"
    if (source / DEMO_MARKER).exists():
        return DEMO_MODEL_ID
    return source.resolve().name


def _adapter_base(config: Path) -> str | None:
    try:
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None  # the loader reports a broken adapter config, with its reason
    return str(base) if base else None


def build_engine(settings: Settings) -> Engine:
    """The engine to serve: the scripted one, the upstreams, or the configured model (by default the
    cached demo model) in the local engine; any failure is a StartupError with a one-line reason."""
    from gateway.engine.scripted import ScriptedEngine

    if settings.engine == "scripted":
        return ScriptedEngine(queue_size=settings.engine_queue_size)
    if settings.upstreams:
        return _guarded(_upstream_engine, settings)
    if settings.model and not Path(settings.model).expanduser().is_dir():  # said before torch takes seconds to import
        raise StartupError(f"{settings.model} is not a directory")
    return _guarded(_local_engine, settings)


def _guarded(build: Callable[[Settings], Engine], settings: Settings) -> Engine:
    try:
        return build(settings)
    except Exception as exc:
        raise StartupError(one_line(exc)) from exc


def _upstream_engine(settings: Settings) -> Engine:
    from gateway.engine.upstream import build_upstream_engine

    return build_upstream_engine(settings)


def _local_engine(settings: Settings) -> Engine:
    from gateway.engine.demo import cache_root, cached_demo_model
    from gateway.engine.local.loader import load_model

    logs.no_progress_bars()
    if settings.engine_compile != "off":
        # Inductor's kernels (its FX graph cache) kept with the gateway's other caches, not in /tmp (cleared at
        # boot): a start after the first compiles each bucket from them (docs/engine.md: cold and warm start-up).
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
    source = model_dir(settings.model) if settings.model else cached_demo_model()
    loaded = load_model(
        source,
        base_model=settings.base_model,
        device=settings.device,
        dtype=settings.dtype,
        trust_remote_code=settings.trust_remote_code,
        model_id=settings.model_id or model_id_of(source, settings.base_model),
        adapters=parse_adapters(settings.adapters),
        chat_template=settings.chat_template,
    )
    return local_engine(settings, loaded)


def local_engine(settings: Settings, loaded: LoadedModel) -> LocalEngine:
    """The local engine over a loaded model, as the settings shape it (the tests' servers too: one place reads them)."""
    from gateway.engine.local.engine import LocalEngine

    return LocalEngine(
        loaded,
        queue_size=settings.engine_queue_size,
        context_tokens=settings.context_tokens,
        max_batch=settings.max_batch,
        threads=settings.engine_threads,
        gather_ms=settings.engine_gather_ms,
        prefill_chunk_tokens=settings.engine_prefill_chunk_tokens,
        warm_up_chunk_tokens=settings.engine_warm_up_chunk_tokens,
        image_cache_bytes=settings.image_cache_bytes,
        image_workers=settings.image_workers,
        kv_cache_bytes=settings.kv_cache_bytes,
        kv_cache_idle_s=settings.kv_cache_idle_s,
        kv_spill_bytes=settings.kv_spill_bytes,
        encoder_cache_bytes=settings.encoder_cache_bytes,
        max_adapters=settings.max_adapters,
        max_adapter_bytes=settings.max_adapter_bytes,
        compile_mode=settings.engine_compile,
    )


def check_store(settings: Settings) -> None:
    """Open the session store once before serving: one that cannot work is a StartupError, unless the
    operator allowed volatile sessions (then it is logged, and sessions are not durable until it works)."""
    from gateway.core.store.open import open_store, store_name

    if settings.session_store == "memory":
        return
    try:
        store = open_store(settings)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    try:
        asyncio.run(_open_and_close(store, settings))
    except Exception as exc:
        reason = f"cannot open the session store {store_name(settings)}: {one_line(exc)}"
        if not settings.allow_volatile_sessions:
            escape = "serve without durable sessions: --session-store memory or --allow-volatile-sessions"
            raise StartupError(f"{reason} ({escape})") from exc
        log.warning("%s; sessions are not durable until it works", reason)


async def _open_and_close(store: SessionStore, settings: Settings) -> None:
    try:
        # A local file may take a one-time VACUUM to open; a server that does not answer is bounded.
        opening = store.open()
        await (opening if settings.session_store == "sqlite" else asyncio.wait_for(opening, settings.store_timeout_s))
    finally:
        await store.close()
