"""The SQLite store's conversation trees: a head per session, its items and pictures one row each."""

from __future__ import annotations

import sqlite3

from gateway.core.conversation_record import ConversationRecord, assemble
from gateway.core.store.tree_sync import TreeChange

SCHEMA = """
CREATE TABLE IF NOT EXISTS trees (session_id TEXT PRIMARY KEY, head BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (
    session_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    item BLOB NOT NULL,
    PRIMARY KEY (session_id, item_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pictures (
    session_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    image BLOB NOT NULL,
    PRIMARY KEY (session_id, sha256)
) WITHOUT ROWID;
"""

# Each table holding a session's history, and its blob column (what the session's size counts).
HISTORY_TABLES = {"exchanges": "exchange", "trees": "head", "items": "item", "pictures": "image"}


def write_tree(db: sqlite3.Connection, session_id: str, change: TreeChange) -> None:
    """`change`, in the caller's transaction: a full one replaces every history row of the session."""
    if change.full:
        delete_history(db, session_id)
    db.executemany("DELETE FROM items WHERE session_id = ? AND item_id = ?", [(session_id, i) for i in change.gone_items])
    gone = [(session_id, sha) for sha in change.gone_pictures]
    db.executemany("DELETE FROM pictures WHERE session_id = ? AND sha256 = ?", gone)
    items = [(session_id, item_id, blob) for item_id, blob in change.items.items()]
    db.executemany("INSERT OR REPLACE INTO items (session_id, item_id, item) VALUES (?, ?, ?)", items)
    pictures = [(session_id, sha, blob) for sha, blob in change.pictures.items()]
    db.executemany("INSERT OR REPLACE INTO pictures (session_id, sha256, image) VALUES (?, ?, ?)", pictures)
    db.execute("INSERT OR REPLACE INTO trees (session_id, head) VALUES (?, ?)", (session_id, change.head))


def read_tree(db: sqlite3.Connection, session_id: str) -> ConversationRecord | None:
    """The session's tree, or None where it has none stored (a session stored before the tree)."""
    row = db.execute("SELECT head FROM trees WHERE session_id = ?", (session_id,)).fetchone()
    if row is None:
        return None
    items = dict(db.execute("SELECT item_id, item FROM items WHERE session_id = ?", (session_id,)).fetchall())
    pictures = dict(db.execute("SELECT sha256, image FROM pictures WHERE session_id = ?", (session_id,)).fetchall())
    return assemble(row[0], items, pictures)


def delete_history(db: sqlite3.Connection, session_id: str) -> None:
    for table in HISTORY_TABLES:
        db.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))


def history_bytes_sql() -> str:
    """SQL for the bytes of session `s.id`'s history rows, for the size bound's eviction order."""
    sums = [
        f"COALESCE((SELECT SUM(LENGTH({column})) FROM {table} h WHERE h.session_id = s.id), 0)"
        for table, column in HISTORY_TABLES.items()
    ]
    return " + ".join(sums)
