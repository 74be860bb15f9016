"""The SQLite store on its own: the small record a resume is checked against, reads beside a stuck
write, the size bound enforced on write with the file given back, and a file that will not open."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

from gateway.config import Settings
from gateway.core.exchange import PendingTurn
from gateway.core.session import Exchange, UserTurn
from gateway.core.store import base
from gateway.core.store.base import SessionRecord
from gateway.core.store.open import SQLITE_FILE
from gateway.core.store.sqlite import SqliteStore

MiB = 1 << 20


def store_in(directory: Path, **settings: object) -> SqliteStore:
    return SqliteStore(directory / SQLITE_FILE, Settings(**settings))  # type: ignore[arg-type]


def record(session_id: str, updated_at: float | None = None) -> SessionRecord:
    return SessionRecord(id=session_id, token_hash=f"hash-{session_id}", owner="o", updated_at=updated_at or time.time())


def exchanges(count: int, text_bytes: int, first: int = 1) -> list[Exchange]:
    """Exchanges of about `text_bytes` of text each (SQLite stores them as they are, uncompressed)."""
    return [Exchange(UserTurn(f"t{n}", f"{n}" * text_bytes), "r", False, n) for n in range(first, first + count)]


async def test_load_meta_is_the_small_record(tmp_path: Path) -> None:
    """`load_meta` answers id, token hash, owner and last use; None for an unknown id."""
    store = store_in(tmp_path)
    try:
        await store.open()
        await store.save_meta(record("a", 123.0))
        await store.sync_history("a", exchanges(3, 1000))
        meta, unknown = await store.load_meta("a"), await store.load_meta("nobody")
    finally:
        await store.close()
    assert meta is not None and (meta.id, meta.token_hash, meta.owner, meta.updated_at) == ("a", "hash-a", "o", 123.0)
    assert unknown is None


async def test_reads_run_beside_a_stuck_write(tmp_path: Path) -> None:
    """While the writer thread is stuck inside a write, `load_meta` and `load` still answer: reads
    never queue behind another session's writes."""
    store = store_in(tmp_path)
    stuck, release = threading.Event(), threading.Event()

    def hang(db: sqlite3.Connection) -> None:
        stuck.set()
        release.wait(30)

    try:
        await store.open()
        await store.save_meta(record("a"))
        writing = asyncio.ensure_future(store._run(hang))
        await asyncio.to_thread(stuck.wait, 10)
        meta, loaded = await store.load_meta("a"), await store.load("a")
        still_writing = not writing.done()
        release.set()
        await writing
    finally:
        release.set()
        await store.close()
    assert still_writing and meta is not None and loaded is not None


async def test_writes_past_the_bound_keep_the_file_within_it(tmp_path: Path) -> None:
    """Writing ten times `max_store_bytes`: the least recently used sessions go on write and the
    database file on disk stays within the bound; the newest sessions stay whole."""
    store = store_in(tmp_path, max_store_bytes=2 * MiB)
    sizes = []
    try:
        await store.open()
        for n in range(40):  # 40 sessions of 512 KiB each: 20 MiB written
            await store.save_meta(record(f"s{n}", updated_at=1000.0 + n))
            await store.sync_history(f"s{n}", exchanges(4, 128 * 1024 // len(str(n)) + 1))
            sizes.append((tmp_path / SQLITE_FILE).stat().st_size)
        newest = await store.load(f"s{39}")
        oldest = await store.load_meta("s0")
    finally:
        await store.close()
    assert max(sizes) <= 2 * MiB
    assert oldest is None and newest is not None and len(newest.exchanges) == 4


async def test_a_file_made_without_incremental_vacuum_gets_it(tmp_path: Path) -> None:
    """A store file from before (auto_vacuum off) is converted once on open, its sessions kept."""
    path = tmp_path / SQLITE_FILE
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, token_hash TEXT NOT NULL, owner TEXT NOT NULL, "
        "system TEXT, defaults BLOB NOT NULL, last_seq INTEGER NOT NULL, updated_at REAL NOT NULL, pending BLOB);"
        "INSERT INTO sessions VALUES ('kept', 'h', '', NULL, x'80', 0, 5.0, NULL);"
    )
    old.close()
    store = store_in(tmp_path)
    try:
        await store.open()
        meta = await store.load_meta("kept")
        mode = await store._run(lambda db: db.execute("PRAGMA auto_vacuum").fetchone()[0])
    finally:
        await store.close()
    assert meta is not None and mode == 2  # INCREMENTAL


async def test_a_corrupt_file_does_not_open(tmp_path: Path) -> None:
    """A file that is not a database makes `open` raise (the server then refuses to start)."""
    (tmp_path / SQLITE_FILE).write_bytes(b"this is not a database" * 100)
    store = store_in(tmp_path)
    try:
        with pytest.raises(sqlite3.DatabaseError):
            await store.open()
    finally:
        await store.close()


async def test_a_pending_turn_is_encoded_on_the_stores_thread(tmp_path: Path) -> None:
    """`set_pending` copies a turn's images into its record off the event loop's thread, and stores it."""
    encoding: list[threading.Thread] = []
    encode = base.encode_pending

    def watched(pending: PendingTurn) -> bytes:
        encoding.append(threading.current_thread())
        return encode(pending)

    store = store_in(tmp_path)
    try:
        await store.open()
        await store.save_meta(record("a"))
        with mock.patch.object(base, "encode_pending", watched):
            await store.set_pending("a", PendingTurn(UserTurn("t1", "look")))
        loaded = await store.load("a")
    finally:
        await store.close()
    assert encoding and encoding[0] is not threading.current_thread()
    assert loaded is not None and loaded.pending is not None and loaded.pending.turn.id == "t1"
