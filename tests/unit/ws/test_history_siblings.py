"""`history` names each entry's siblings, so a client flips `< n/m >` with `switch` after a reload too."""

from __future__ import annotations

from gateway.core.items import Content
from gateway.core.session import Session
from gateway.ws import protocol as p
from gateway.ws.replies import history_frame


def test_each_entry_lists_its_siblings_ids_in_index_order() -> None:
    """A regenerated reply's entry lists the old reply's id then its own (its `index` points at itself);
    an item with no siblings lists itself alone."""
    session = Session(max_history_turns=10)
    tree = session.conversation
    question = tree.append(Content.user("q", turn_id="t1"))
    old = tree.append(Content.reply("a", turn_id="t1"))
    new = tree.attach(tree.regenerate(old.id).id, Content.reply("b", turn_id="r1"))
    user, reply = history_frame(session, p.HistoryRequestFrame()).turns
    assert (user.sibling_ids, user.index) == ([question.id], 0)
    assert (reply.sibling_ids, reply.index, reply.item_id) == ([old.id, new.id], 1, new.id)
