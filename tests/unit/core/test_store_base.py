"""What every store shares: the record a session is rebuilt from, and the encoding of turns and exchanges."""

from __future__ import annotations

from gateway.core.exchange import PendingTurn
from gateway.core.request import SamplingOptions
from gateway.core.session import Exchange, ToolResult, UserTurn
from gateway.core.store.base import (
    SessionRecord,
    decode_exchange,
    decode_options,
    decode_record,
    decode_turn,
    encode_exchange,
    encode_options,
    encode_turn,
    exchanges_to_write,
)
from gateway.engine.contract import ChatImage, ToolCall

IMAGE = ChatImage(b"\x89PNG...", "image/png", 4, 3, "ab" * 32)


def exchange(number: int) -> Exchange:
    return Exchange(UserTurn(f"t{number}", f"q{number}"), f"a{number}", number=number)


def test_a_turn_survives_encoding_with_its_images() -> None:
    """A user turn decodes to what was encoded: id, text, image bytes and sizes, and `continues`."""
    turn = UserTurn("t1", "look", images=(IMAGE,), continues=True)
    decoded = decode_turn(encode_turn(turn))
    (image,) = decoded.images  # ChatImage compares by identity: its fields are compared here
    assert (decoded.id, decoded.text, decoded.continues) == ("t1", "look", True)
    assert (image.data, image.mime, image.width, image.height, image.sha256) == (IMAGE.data, "image/png", 4, 3, IMAGE.sha256)


def test_an_exchange_survives_encoding_with_its_tool_calls_and_results() -> None:
    """Reply, partial mark, tool calls and their results come back; the number is the store's to give."""
    original = Exchange(
        UserTurn("t1", "weather?"),
        "",
        partial=True,
        number=7,
        tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),),
        tool_results=(ToolResult("c1", "21"),),
    )
    assert decode_exchange(encode_exchange(original), 7) == original


def test_options_survive_encoding_with_unset_fields_unset() -> None:
    """Session defaults come back equal, fields never set still None."""
    options = SamplingOptions(temperature=0.2, stop=["END"])
    assert decode_options(encode_options(options)) == options


def test_a_store_writes_what_it_lacks_and_its_newest_again() -> None:
    """exchanges_to_write: from the stored newest on (tool results join it later), all when the store has none."""
    history = [exchange(n) for n in (3, 4, 5)]
    assert [number for number, _ in exchanges_to_write(history, 4)] == [4, 5]
    assert [number for number, _ in exchanges_to_write(history, None)] == [3, 4, 5]


def test_a_record_is_decoded_from_what_a_store_keeps() -> None:
    """decode_record puts the exchanges in number order, whatever order the store returns them in."""
    blobs = exchanges_to_write([exchange(1), exchange(2)], None)
    defaults = encode_options(SamplingOptions(top_k=3))
    record = decode_record("s", ("h", "o", None, defaults, None, 9, 1.5), reversed(blobs))
    assert [e.reply for e in record.exchanges] == ["a1", "a2"] and record.defaults.top_k == 3
    assert (record.token_hash, record.owner, record.pending, record.last_seq, record.updated_at) == ("h", "o", None, 9, 1.5)


def test_a_turn_pending_at_a_crash_joins_as_partial() -> None:
    """A record saved while a turn ran rebuilds a session whose last exchange is that turn, partial, numbered next."""
    pending = PendingTurn(UserTurn("t3", "q3"))
    record = SessionRecord(id="s", token_hash="h", owner="", exchanges=[exchange(1), exchange(2)], pending=pending)
    session = record.session(max_history_turns=10)
    last = session.exchanges[-1]
    assert (last.turn.id, last.reply, last.partial, last.number) == ("t3", "", True, 3)


def test_a_rebuilt_session_keeps_only_max_history_turns() -> None:
    """The rebuilt history is bounded like a live one: the newest exchanges stay."""
    record = SessionRecord(id="s", token_hash="h", owner="", exchanges=[exchange(n) for n in range(1, 6)])
    assert [e.number for e in record.session(max_history_turns=2).exchanges] == [4, 5]
