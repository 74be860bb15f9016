"""The memory store keeps nothing: sessions live only in the hub, so a resume after a restart finds none."""

from __future__ import annotations

from gateway.core.exchange import PendingTurn
from gateway.core.session import Exchange, UserTurn
from gateway.core.store.base import SessionRecord, SessionStore
from gateway.core.store.memory import MemoryStore


def test_the_memory_store_is_not_persistent() -> None:
    """`persistent` is False, so the hub keeps no resume promise past the process."""
    store: SessionStore = MemoryStore()
    assert store.persistent is False


async def test_what_is_saved_is_not_found_again() -> None:
    """Saved meta, history and pending turns are never read back: every load is None."""
    store = MemoryStore()
    await store.open()
    await store.save_meta(SessionRecord(id="a", token_hash="h", owner=""))
    await store.sync_history("a", [Exchange(UserTurn("t1", "hi"), "hello", number=1)])
    await store.set_pending("a", PendingTurn(UserTurn("t2", "more")))
    assert (await store.load_meta("a"), await store.load("a")) == (None, None)
    await store.close()


async def test_purge_and_delete_have_nothing_to_remove() -> None:
    """Purging removes no session (none is held here), and deleting an unknown one is no error."""
    store = MemoryStore()
    await store.delete("nobody")
    assert await store.purge(now=1e12) == 0
