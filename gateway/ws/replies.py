"""Server frames built from settings, sessions and engine results: limits, defaults, history, `done`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from gateway.config import Settings
from gateway.core.items import Item, Placed, Role
from gateway.core.session import Session
from gateway.engine.contract import ChatImage, Engine
from gateway.ws import protocol as p

if TYPE_CHECKING:
    from gateway.core.turns import TurnService


def limits_of(settings: Settings, engine: Engine) -> dict[str, int | float]:
    """The limits a client must respect, as announced in `ready`."""
    held = engine.load()  # the engine's KV budgets: a default depends on the device's free memory
    return {
        "max_frame_bytes": settings.max_frame_bytes,
        "max_json_frame_bytes": min(settings.max_json_frame_bytes, settings.max_frame_bytes),
        "max_compressed_frame_bytes": min(settings.max_compressed_frame_bytes, settings.max_frame_bytes),
        "max_image_bytes": settings.max_image_bytes,
        "max_image_pixels": settings.max_image_pixels,
        "max_images_per_turn": settings.max_images_per_turn if engine.vision else 0,
        "max_videos_per_turn": settings.max_videos_per_turn if engine.vision else 0,
        "max_video_frames": settings.max_video_frames,
        "max_video_duration_s": int(settings.max_video_duration_s),
        "video_fps": settings.video_fps,
        "live_window_frames": settings.live_window_frames,
        "live_window_bytes": settings.live_window_bytes,
        "max_frames_per_second": settings.max_frames_per_second,
        "max_live_sources": settings.max_live_sources,
        "live_merge_distance": settings.live_merge_distance,
        "min_watch_every_s": settings.min_watch_every_s,
        "max_text_chars": settings.max_text_chars,
        "max_history_turns": settings.max_history_turns,
        "max_siblings": settings.max_siblings,
        "max_stop_strings": settings.max_stop_strings,
        "max_tokens": settings.max_tokens_limit,
        "context_tokens": engine.context_tokens,
        "trim_headroom_tokens": settings.trim_headroom_tokens(engine.context_tokens),
        "max_session_image_bytes": settings.max_session_image_bytes,
        "max_total_image_bytes": settings.max_total_image_bytes,
        "inbound_bytes_per_second": settings.inbound_bytes_per_second,
        "session_grace_s": int(settings.session_grace_s),
        "session_ttl_s": int(settings.session_ttl_s),
        "max_connections": settings.max_connections,
        "max_connections_per_client": settings.max_connections_per_client,
        "max_sessions_per_client": settings.max_sessions_per_client,
        "history_image_bytes_per_second": settings.history_image_bytes_per_second,
        "frames_per_second": int(settings.frames_per_second),
        "turns_per_minute": int(settings.turns_per_minute),
        "idle_timeout_s": int(settings.idle_timeout_s),
        "keepalive_interval_s": int(settings.keepalive_interval_s),
        "keepalive_timeout_s": int(settings.keepalive_timeout_s),
        "send_timeout_s": int(settings.send_timeout_s),
        "kv_cache_bytes": held.kv_cache_budget,
        "kv_spill_bytes": held.kv_spill_budget,
        "kv_cache_idle_s": int(settings.kv_cache_idle_s),
        "max_grammar_bytes": settings.max_grammar_bytes,
        "grammar_compiles_per_minute": int(settings.grammar_compiles_per_minute),
        "grammar_compiles_per_minute_per_client": int(settings.grammar_compiles_per_minute_per_client),
    }


def session_defaults(turns: TurnService, session: Session) -> dict[str, Any]:
    """The options a turn of `session` runs with unless it says otherwise, and its system prompt."""
    server = turns.server_defaults
    merged = {k: getattr(server, k) for k in p.SamplingOptions.__struct_fields__}
    merged.update({k: v for k in merged if (v := getattr(session.defaults, k)) is not None})
    merged["model"] = merged["model"] or turns.engine.model_id
    merged["system"] = session.system
    return merged


def history_frame(session: Session, frame: p.HistoryRequestFrame) -> p.HistoryFrame:
    """The active path, one entry per item (a reply's calls join its entry), each with its place among its
    siblings; a tool entry carries its turn's id, as the reply it answers does."""
    entries: list[p.HistoryEntry] = []
    turn_id: str | None = None
    for placed in session.conversation.history():
        item, content = placed.item, placed.item.content
        turn_id = content.turn_id if item.role is not Role.TOOL_RESULT else turn_id
        if item.role is Role.TOOL_CALL and content.call is not None and entries:
            call = content.call
            entries[-1].tool_calls.append(p.ToolCallInfo(call.id, call.name, call.arguments, item_id=item.id))
            continue
        if item.role is Role.TOOL_RESULT:
            entry = p.HistoryEntry(role="tool", text=content.text, id=turn_id, call_id=content.call_id)
        elif item.role is Role.ASSISTANT:
            entry = p.HistoryEntry(role="assistant", text=content.text, id=turn_id, partial=content.partial)
        else:
            images = [_image_info(i, frame.include_images) for i in content.images]
            role: Literal["user", "note"] = "user" if item.role is Role.USER else "note"
            entry = p.HistoryEntry(role=role, text=content.text, id=turn_id, images=images)
        entries.append(_placed(entry, placed, session.conversation.children(placed.item.parent)))
    return p.HistoryFrame(system=session.system, turns=entries, id=frame.id)


def _placed(entry: p.HistoryEntry, placed: Placed, siblings: list[Item]) -> p.HistoryEntry:
    entry.item_id, entry.siblings, entry.index = placed.item.id, placed.siblings, placed.index
    entry.sibling_ids = [sibling.id for sibling in siblings]
    return entry


def _image_info(image: ChatImage, include_data: bool) -> p.ImageInfo:
    return p.ImageInfo(
        format=image.format,
        width=image.width,
        height=image.height,
        bytes=len(image.data),
        sha256=image.sha256,
        data=image.data if include_data else None,
    )
