"""The store the settings name: `memory`, `sqlite` (in the data directory) or a redis:// URL."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config import Settings
from gateway.core.store.base import SessionStore
from gateway.core.store.memory import MemoryStore

SQLITE_FILE = "sessions-v2.db"  # the schema's version is in the name: a changed schema starts a new file


def data_dir(settings: Settings) -> Path:
    """`--data-dir`, else $XDG_DATA_HOME/gateway, else ~/.local/share/gateway."""
    if settings.data_dir:
        return Path(settings.data_dir)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gateway"


def open_store(settings: Settings) -> SessionStore:
    kind = settings.session_store
    if kind == "memory":
        return MemoryStore()
    if kind.startswith(("redis://", "rediss://", "unix://")):
        from gateway.core.store.redis import RedisStore

        store: SessionStore = RedisStore(kind, settings)
        return store
    if kind == "sqlite":
        from gateway.core.store.sqlite import SqliteStore

        return SqliteStore(data_dir(settings) / SQLITE_FILE, settings)
    raise ValueError(f"unknown session store {kind!r}: use sqlite, memory or a redis:// URL")


def store_name(settings: Settings) -> str:
    """The store as a log line may name it: the SQLite file, or the Redis URL without its credentials."""
    kind = settings.session_store
    if kind == "sqlite":
        return str(data_dir(settings) / SQLITE_FILE)
    url = urlsplit(kind)
    return f"{url.scheme}://{url.hostname or ''}{f':{url.port}' if url.port else ''}{url.path}"
