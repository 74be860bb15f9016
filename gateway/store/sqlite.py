"""The default store: embedded SQLite in the data directory, in WAL mode, owned by one thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.config import Settings
from gateway.session import Exchange, UserTurn
from gateway.store.base import (
    SessionRecord,
    changed_exchanges,
    decode_exchange,
    decode_options,
    decode_turn,
    encode_exchange,
    encode_options,
    encode_turn,
    exchange_bytes,
)

T = TypeVar("T")

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
"""


class SqliteStore:
    """One connection, used only by the store's own thread; every call is one transaction there."""

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.ttl_s = settings.session_ttl_s
        self.max_bytes = settings.max_store_bytes
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gateway-store")
        self._db: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash, which is what kill -9 is
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def in_transaction() -> T:
            db = self._open()
            with db:
                db.execute("BEGIN")
                return work(db)

        return await asyncio.get_running_loop().run_in_executor(self._thread, in_transaction)

    async def load(self, session_id: str) -> SessionRecord | None:
        def load(db: sqlite3.Connection) -> SessionRecord | None:
            row = db.execute(
                "SELECT token_hash, owner, system, defaults, last_seq, updated_at, pending FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
            if row is None:
                return None
            rows = db.execute(
                "SELECT number, exchange FROM exchanges WHERE session_id = ? ORDER BY number", (session_id,)
            ).fetchall()
            exchanges = [decode_exchange(blob, number) for number, blob in rows]
            token_hash, owner, system, defaults, last_seq, updated_at, pending = row
            return SessionRecord(
                id=session_id,
                token_hash=token_hash,
                owner=owner,
                system=system,
                defaults=decode_options(defaults),
                exchanges=exchanges,
                pending=decode_turn(pending) if pending is not None else None,
                last_seq=last_seq,
                updated_at=updated_at,
            )

        return await self._run(load)

    async def save_meta(self, record: SessionRecord) -> None:
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
                    encode_options(record.defaults),
                    record.last_seq,
                    record.updated_at,
                ),
            )

        await self._run(save)

    async def sync_history(self, session_id: str, exchanges: list[Exchange]) -> None:
        def sync(db: sqlite3.Connection) -> None:
            first = exchanges[0].number if exchanges else None
            if first is None:
                db.execute("DELETE FROM exchanges WHERE session_id = ?", (session_id,))
                return
            db.execute("DELETE FROM exchanges WHERE session_id = ? AND number < ?", (session_id, first))
            (stored,) = db.execute("SELECT MAX(number) FROM exchanges WHERE session_id = ?", (session_id,)).fetchone()
            db.executemany(
                "INSERT OR REPLACE INTO exchanges (session_id, number, exchange, bytes) VALUES (?, ?, ?, ?)",
                [(session_id, e.number, encode_exchange(e), exchange_bytes(e)) for e in changed_exchanges(exchanges, stored)],
            )

        await self._run(sync)

    async def set_pending(self, session_id: str, turn: UserTurn | None) -> None:
        blob = encode_turn(turn) if turn is not None else None
        await self._run(lambda db: db.execute("UPDATE sessions SET pending = ? WHERE id = ?", (blob, session_id)) and None)

    async def delete(self, session_id: str) -> None:
        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM exchanges WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

        await self._run(delete)

    async def purge(self, now: float) -> int:
        """Sessions unused past the TTL go; then, while the store is over its size, the least recently used."""

        def purge(db: sqlite3.Connection) -> int:
            expired = [r[0] for r in db.execute("SELECT id FROM sessions WHERE updated_at < ?", (now - self.ttl_s,))]
            sizes = db.execute(
                "SELECT s.id, COALESCE(SUM(e.bytes), 0) FROM sessions s LEFT JOIN exchanges e ON e.session_id = s.id "
                "GROUP BY s.id ORDER BY s.updated_at"
            ).fetchall()
            total = sum(size for _, size in sizes)
            doomed = set(expired)
            for session_id, size in sizes:
                if total <= self.max_bytes:
                    break
                doomed.add(session_id)
                total -= size
            for session_id in doomed:
                db.execute("DELETE FROM exchanges WHERE session_id = ?", (session_id,))
                db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            return len(doomed)

        return await self._run(purge)

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=True)
