"""The default store: embedded SQLite in the data directory, in WAL mode: one writer thread, two readers."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.config import Settings
from gateway.core.exchange import PendingTurn
from gateway.core.session import Exchange
from gateway.core.store import base, sqlite_tree
from gateway.core.store.tree_sync import TreeChange

T = TypeVar("T")

READERS = 2  # loads run beside the writer (WAL), so a client reading big sessions never delays anyone's save

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    owner TEXT NOT NULL,
    system TEXT,
    defaults BLOB NOT NULL,
    last_seq INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    pending BLOB
);
CREATE TABLE IF NOT EXISTS exchanges (
    session_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    exchange BLOB NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (session_id, number)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_use ON sessions (updated_at);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID;
"""


class SqliteStore:
    """One writer connection, used only by the writer thread, where every write is one transaction;
    reads run on reader threads with connections of their own."""

    persistent = True

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.ttl_s = settings.session_ttl_s
        self.max_bytes = settings.max_store_bytes
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gateway-store")
        self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="gateway-store-read")
        self._db: sqlite3.Connection | None = None
        self._local = threading.local()
        self._reader_dbs: list[sqlite3.Connection] = []

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                _prepare(db)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"  # as_uri escapes what a URI would misread (?, #, %)
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self._local.db = db
            self._reader_dbs.append(db)
        return db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in one transaction on the writer thread."""
        return await _in_transaction(self._thread, self._open, work)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in one snapshot on a reader thread, beside the writer (WAL)."""
        return await _in_transaction(self._readers, self._reader, work)

    async def open(self) -> None:
        await self._run(lambda db: None)

    async def load_meta(self, session_id: str) -> base.SessionMeta | None:
        def load_meta(db: sqlite3.Connection) -> base.SessionMeta | None:
            row = db.execute("SELECT token_hash, owner, updated_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
            return None if row is None else base.SessionMeta(session_id, *row)

        return await self._read(load_meta)

    async def load(self, session_id: str) -> base.SessionRecord | None:
        def load(db: sqlite3.Connection) -> base.SessionRecord | None:
            row = db.execute(
                "SELECT token_hash, owner, system, defaults, pending, last_seq, updated_at FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
            if row is None:
                return None
            tree = sqlite_tree.read_tree(db, session_id)
            query = "SELECT number, exchange FROM exchanges WHERE session_id = ?"
            rows = db.execute(query, (session_id,)).fetchall() if tree is None else []
            return base.decode_record(session_id, row, rows, tree)

        return await self._read(load)

    async def save_meta(self, record: base.SessionRecord) -> None:
        def save(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO sessions (id, token_hash, owner, system, defaults, last_seq, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET system = excluded.system, "
                "defaults = excluded.defaults, last_seq = excluded.last_seq, updated_at = excluded.updated_at",
                (
                    record.id,
                    record.token_hash,
                    record.owner,
                    record.system,
                    base.encode_options(record.defaults),
                    record.last_seq,
                    record.updated_at,
                ),
            )

        await self._run(save)

    async def sync_history(self, session_id: str, exchanges: list[Exchange]) -> None:
        exchanges = list(exchanges)  # the event loop may change the session's list while the thread writes

        def sync(db: sqlite3.Connection) -> bool:
            first = exchanges[0].number if exchanges else None
            if first is None:
                db.execute("DELETE FROM exchanges WHERE session_id = ?", (session_id,))
                return False
            db.execute("DELETE FROM exchanges WHERE session_id = ? AND number < ?", (session_id, first))
            (stored,) = db.execute("SELECT MAX(number) FROM exchanges WHERE session_id = ?", (session_id,)).fetchone()
            blobs = base.exchanges_to_write(exchanges, stored)
            db.executemany(
                "INSERT OR REPLACE INTO exchanges (session_id, number, exchange, bytes) VALUES (?, ?, ?, ?)",
                [(session_id, number, blob, len(blob)) for number, blob in blobs],
            )
            return self._bound(db, session_id)

        await self._write_bounded(sync)

    async def sync_tree(self, session_id: str, change: TreeChange) -> None:
        def sync(db: sqlite3.Connection) -> bool:
            sqlite_tree.write_tree(db, session_id, change)
            return self._bound(db, session_id)

        await self._write_bounded(sync)

    async def set_pending(self, session_id: str, pending: PendingTurn | None) -> None:
        def pend(db: sqlite3.Connection) -> bool:
            # encoded here, on the store's thread: a turn's images are copied twice (34 ms of the loop for 16 MB)
            blob = base.encode_pending(pending) if pending is not None else None
            db.execute("UPDATE sessions SET pending = ? WHERE id = ?", (blob, session_id))
            return blob is not None and self._bound(db, session_id)

        await self._write_bounded(pend)

    async def delete(self, session_id: str) -> None:
        await self._run(lambda db: _delete(db, session_id))

    async def purge(self, now: float) -> int:
        """Sessions unused past the TTL go; then, while the store is over its size, the least recently used."""

        def purge(db: sqlite3.Connection) -> int:
            expired = [r[0] for r in db.execute("SELECT id FROM sessions WHERE updated_at < ?", (now - self.ttl_s,))]
            for session_id in expired:
                _delete(db, session_id)
            evicted = _evict(db, self.max_bytes, keep=None) if _used_bytes(db) > self.max_bytes else 0
            return len(expired) + evicted

        purged = await self._run(purge)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._compact)
        return purged

    def _bound(self, db: sqlite3.Connection, keep: str) -> bool:
        """Past `max_store_bytes`, the least recently used sessions (never `keep`) go; whether any
        did, so that the caller compacts the file."""
        if _used_bytes(db) <= self.max_bytes:
            return False
        _evict(db, int(self.max_bytes * base.LOW_WATER), keep)
        return True

    async def _write_bounded(self, work: Callable[[sqlite3.Connection], bool]) -> None:
        if await self._run(work):
            await asyncio.get_running_loop().run_in_executor(self._thread, self._compact)

    def _compact(self) -> None:
        """Free pages go back to the file system: the vacuum moves them to the file's end and cuts
        it there, and in WAL mode the file itself shrinks only when a checkpoint copies that in.
        (A script, outside any transaction: `execute` runs one step of the vacuum, one page.)"""
        if self._db is not None:
            self._db.executescript("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")

    async def claim(self, key: str, now: float, until: float) -> bool:
        """One transaction on the writer: expired claims go, then the key is inserted unless held."""

        def claim(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM claims WHERE until < ?", (now,))
            return db.execute("INSERT OR IGNORE INTO claims (key, until) VALUES (?, ?)", (key, until)).rowcount == 1

        return await self._run(claim)

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        for db in self._reader_dbs:
            db.close()
        self._reader_dbs.clear()


async def _in_transaction(
    pool: ThreadPoolExecutor, connection: Callable[[], sqlite3.Connection], work: Callable[[sqlite3.Connection], T]
) -> T:
    def transaction() -> T:
        db = connection()
        with db:
            db.execute("BEGIN")
            return work(db)

    return await asyncio.get_running_loop().run_in_executor(pool, transaction)


def _prepare(db: sqlite3.Connection) -> None:
    """Settings, schema, and incremental vacuum (a file made before it had none: one VACUUM turns it on)."""
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("VACUUM")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash, which is what kill -9 is
    db.execute("PRAGMA journal_size_limit=4194304")  # a checkpointed WAL is cut back to 4 MiB, not left at its peak
    db.executescript(SCHEMA + sqlite_tree.SCHEMA)


def _delete(db: sqlite3.Connection, session_id: str) -> None:
    sqlite_tree.delete_history(db, session_id)
    db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))


def _used_bytes(db: sqlite3.Connection) -> int:
    """The database's pages in use (free pages excluded): what the file holds after a vacuum."""
    pages, free, size = (db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "freelist_count", "page_size"))
    return int((pages - free) * size)


def _evict(db: sqlite3.Connection, target: int, keep: str | None) -> int:
    """Delete the least recently used sessions (not `keep`) until about `target` bytes are in use."""
    used, evicted = _used_bytes(db), 0
    sizes = db.execute(
        f"SELECT s.id, COALESCE(LENGTH(s.pending), 0) + {sqlite_tree.history_bytes_sql()} FROM sessions s ORDER BY s.updated_at"
    ).fetchall()
    for session_id, size in sizes:
        if used <= target:
            break
        if session_id != keep:
            _delete(db, session_id)
            used -= size
            evicted += 1
    return evicted
