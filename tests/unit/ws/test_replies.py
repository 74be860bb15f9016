"""Server frames built from settings and sessions, with no server: `ready`'s limits and `history`."""

from __future__ import annotations

from gateway.config import Settings
from gateway.core.session import Exchange, Session, ToolResult, UserTurn
from gateway.engine.contract import ChatImage, ToolCall
from gateway.engine.scripted import ScriptedEngine
from gateway.ws import protocol as p
from gateway.ws.replies import history_frame, limits_of

IMAGE = ChatImage(b"\x89PNG-bytes", "image/png", 4, 3, "ab" * 32)


def test_limits_announce_the_settings_and_the_engines_context() -> None:
    """`ready.limits` carries each bound a client must respect, from the settings and the engine."""
    limits = limits_of(Settings(max_text_chars=1234, max_images_per_turn=3), ScriptedEngine(context_tokens=4096))
    assert (limits["max_text_chars"], limits["max_images_per_turn"], limits["context_tokens"]) == (1234, 3, 4096)


def test_a_text_only_engine_announces_no_images_per_turn() -> None:
    """Without vision, max_images_per_turn is 0 whatever the setting says."""
    engine = ScriptedEngine()
    engine.vision = False
    assert limits_of(Settings(max_images_per_turn=3), engine)["max_images_per_turn"] == 0


FRACTIONAL = {"video_fps", "max_frames_per_second", "min_watch_every_s"}  # numbers, as PROTOCOL.md says


def test_every_limit_is_a_whole_number_but_the_rates() -> None:
    """Limits are integers on the wire (seconds rounded down), so every client reads them alike; the live-vision
    rates alone may be fractional, and are numbers."""
    limits = limits_of(Settings(), ScriptedEngine())
    assert all(isinstance(v, int) for k, v in limits.items() if k not in FRACTIONAL)
    assert all(isinstance(limits[k], (int, float)) for k in FRACTIONAL)


def session_with(*exchanges: Exchange) -> Session:
    session = Session(max_history_turns=10, system="be brief")
    session.restore(exchanges)
    return session


def test_history_lists_user_then_assistant_per_exchange() -> None:
    """Each exchange is a user entry then an assistant entry, both with the turn's id; a cut reply is partial."""
    session = session_with(Exchange(UserTurn("t1", "q"), "a", partial=True, number=1))
    frame = history_frame(session, p.HistoryRequestFrame(id="h"))
    assert frame.system == "be brief" and frame.id == "h"
    assert [(e.role, e.text, e.id, e.partial) for e in frame.turns] == [
        ("user", "q", "t1", False),
        ("assistant", "a", "t1", True),
    ]


def test_history_images_carry_their_bytes_only_when_asked() -> None:
    """Image entries always describe the image; its bytes come only with include_images."""
    session = session_with(Exchange(UserTurn("t1", "look", images=(IMAGE,)), "ok", number=1))
    bare = history_frame(session, p.HistoryRequestFrame()).turns[0].images[0]
    full = history_frame(session, p.HistoryRequestFrame(include_images=True)).turns[0].images[0]
    assert (bare.format, bare.bytes, bare.data) == ("png", len(IMAGE.data), None) and full.data == IMAGE.data


def test_history_shows_tool_calls_and_their_results() -> None:
    """An assistant entry lists its calls; each result follows as a tool entry naming its call."""
    call = ToolCall("c1", "f", "{}")
    session = session_with(
        Exchange(UserTurn("t1", "q"), "", number=1, tool_calls=(call,), tool_results=(ToolResult("c1", "21"),)),
        Exchange(UserTurn("t2", "", continues=True), "it is 21", number=2),
    )
    roles = [(e.role, e.call_id) for e in history_frame(session, p.HistoryRequestFrame()).turns]
    assert roles == [("user", None), ("assistant", None), ("tool", "c1"), ("assistant", None)]
    assert history_frame(session, p.HistoryRequestFrame()).turns[1].tool_calls[0].name == "f"
