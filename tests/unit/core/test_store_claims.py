"""A store's claims (a scoped token's single use): the first claim wins, a held one refuses, an expired one frees."""

from __future__ import annotations

from pathlib import Path

from gateway.config import Settings
from gateway.core.store.base import SessionStore
from gateway.core.store.memory import MemoryStore
from gateway.core.store.open import SQLITE_FILE
from gateway.core.store.sqlite import SqliteStore


async def claims_hold_until_they_expire(store: SessionStore) -> None:
    assert await store.claim("t1", now=100.0, until=160.0) is True
    assert await store.claim("t1", now=159.0, until=219.0) is False
    assert await store.claim("t2", now=159.0, until=219.0) is True  # another key is free
    assert await store.claim("t1", now=161.0, until=221.0) is True  # the first claim expired


async def test_the_memory_store_claims_once_until_expiry() -> None:
    """In memory, a key claimed is refused until its claim expires, then free again."""
    await claims_hold_until_they_expire(MemoryStore())


async def test_the_sqlite_store_claims_once_until_expiry(tmp_path: Path) -> None:
    """In SQLite, the same, and a claim outlives the store's reopening (a restart on the same file)."""
    store = SqliteStore(tmp_path / SQLITE_FILE, Settings())
    try:
        await store.open()
        await claims_hold_until_they_expire(store)
    finally:
        await store.close()
    reopened = SqliteStore(tmp_path / SQLITE_FILE, Settings())
    try:
        assert await reopened.claim("t2", now=200.0, until=260.0) is False
    finally:
        await reopened.close()
