"""Both durable stores (real SQLite, real Redis) keep a conversation's whole tree, write it item by item, and
still load sessions stored as a flat history before the tree."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.client import GatewayClient
from gateway.config import Settings
from gateway.core.conversation import Conversation
from gateway.core.items import Content
from gateway.core.session import Exchange, Session, UserTurn
from gateway.core.store.base import SessionRecord, SessionStore
from gateway.core.store.open import open_store
from gateway.core.store.tree_sync import StoredTree
from tests.conftest import DemoDirs, RunningServer, start_server, wait_until
from tests.conversation_support import chat, picture, tree


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path) -> AsyncIterator[SessionStore]:
    kind = "sqlite" if request.param == "sqlite" else redis_url
    opened = open_store(Settings(session_store=kind, data_dir=str(tmp_path)))
    await opened.open()
    yield opened
    await opened.delete("s")
    await opened.close()


def branched() -> Conversation:
    """Two exchanges; the first reply regenerated (the second exchange on the old branch); a picture shown twice."""
    t = tree()
    t.append(Content.user("look", (picture("p"),)))
    t.append(Content.reply("a cat"))
    chat(t, "2")
    t.attach("i1", Content.reply("a small cat"))
    t.append(Content.user("and this?", (picture("p"),)))
    return t


def shape(conversation: Conversation) -> list[tuple[str, str | None, str, int, int]]:
    """Every item with its parent, text, `touched` clock and pictures, in the tree's order."""
    return [(i.id, i.parent, i.content.text, touched, len(i.content.images)) for i, touched in conversation.walk()]


async def save(store: SessionStore, stored: StoredTree, conversation: Conversation) -> None:
    change, snapshot = stored.change(conversation)
    await store.sync_tree("s", change)
    stored.saved(snapshot)


async def loaded(store: SessionStore) -> Session:
    record = await store.load("s")
    assert record is not None
    return record.session(max_history_turns=100)


async def test_every_branch_comes_back_with_its_clocks_and_the_active_path(store: SessionStore) -> None:
    """A full write, then changes (a truncate, a switch, a delete) written item by item: the loaded tree is the tree."""
    t, stored = branched(), StoredTree()
    await store.save_meta(SessionRecord(id="s", token_hash="h", owner="", updated_at=time.time()))
    await save(store, stored, t)
    t.truncate("i2", 3)
    t.switch("i4")
    await save(store, stored, t)
    t.delete("i3")
    await save(store, stored, t)
    session = await loaded(store)
    assert shape(session.conversation) == shape(t)
    assert [i.id for i in session.conversation.path] == [i.id for i in t.path]
    assert [(p.siblings, p.index) for p in session.conversation.history()] == [(p.siblings, p.index) for p in t.history()]


async def test_a_flat_history_of_before_loads_and_the_first_tree_write_replaces_it(store: SessionStore) -> None:
    """A session stored as exchanges loads as one branch; a full tree write drops the exchanges; `delete` removes all."""
    await store.save_meta(SessionRecord(id="s", token_hash="h", owner="", updated_at=time.time()))
    await store.sync_history(
        "s", [Exchange(UserTurn("t1", "one"), "r1", number=1), Exchange(UserTurn("t2", "two"), "r2", number=2)]
    )
    old = await loaded(store)
    old.conversation.attach(old.conversation.path[0].id, Content.reply("r1 again"))
    await save(store, StoredTree(), old.conversation)
    record = await store.load("s")
    await store.delete("s")
    assert [i.content.text for i in old.conversation.path] == ["one", "r1 again"]
    assert record is not None and record.exchanges == [] and record.tree is not None
    assert shape(record.session(100).conversation) == shape(old.conversation)
    assert await store.load("s") is None


@pytest.fixture(scope="module")
def unloading(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    """A server whose sessions leave memory as their socket goes: a resume loads them from the SQLite store."""
    running = start_server(demo_dirs.model, Settings(session_grace_s=0, turns_per_minute=1e6))
    yield running
    running.stop()


async def test_a_session_loaded_from_the_store_has_every_branch(unloading: RunningServer) -> None:
    """A regenerated reply and an edited message, the socket gone (the session unloaded), a resume: `history`
    is what it was, `< 2/2 >` included, and `switch` finds the old branch."""
    async with GatewayClient(unloading.ws_url) as client:
        first = await client.turn("t1", "one", max_tokens=3, temperature=0)
        await client.regenerate("r1", max_tokens=3, temperature=1.0, seed=1)
        assert first.accepted and first.done
        before = await client.edit(None, first.accepted["item_id"], "uno")
        session, token = client.ready["session"], client.ready["resume_token"]
    await wait_until(lambda: session not in unloading.app.state.ws.hub.live)
    async with GatewayClient(unloading.ws_url) as again:
        resumed = await again.request({"type": "resume", "session": session, "token": token})
        after = await again.request({"type": "history"})
        back = await again.switch(first.done["reply_id"])
    assert resumed["type"] == "resumed" and isinstance(before, dict)
    assert after["turns"] == before["turns"]
    assert [(t["text"], t["siblings"], t["index"]) for t in back["turns"]] == [("one", 2, 0), (first.done["text"], 2, 0)]
