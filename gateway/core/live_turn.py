"""A live turn: the prompt reads the window's frames before the user's text; the history keeps only their summary."""

from __future__ import annotations

from dataclasses import replace

from gateway.core.live_timeline import ClipsShown, LiveFramesShown
from gateway.core.live_view import LiveFrames, LiveView
from gateway.core.live_window import LiveFrame
from gateway.core.session import UserTurn
from gateway.core.video_frames import window_clip


def frame_markers(view: LiveView) -> str:
    """One marker per frame, in the images' order, at the client time it was first seen: a still scene's frame
    keeps its marker as its image, so the prompt's tokens stay the same from turn to turn."""
    return " ".join(_marker(view.source, frame) for frame in view.snapshot.frames)


def summary(view: LiveView) -> str:
    """The exchange's trace of the frames in the history: their count and span, never their pixels."""
    live = LiveFrames.of(view)
    return f"[live {view.source}: {live.count} frames, {live.first_ts / 1000:.3f} s to {live.last_ts / 1000:.3f} s]"


def live_turns(turn: UserTurn, view: LiveView, keep_last_frame: bool, as_clip: bool = False) -> tuple[UserTurn, UserTurn]:
    """The turn as prompted (the window's frames after its own images, their markers before its text; or, where
    the engine reads video (`as_clip`), the window as one clip after the summary) and as recorded (the summary
    before its text, and the last frame only when `keep_last_frame`)."""
    frames = tuple(frame.image for frame in view.snapshot.frames)
    if as_clip:
        prompted = replace(turn, text=f"{summary(view)}\n{turn.text}", videos=(window_clip(view.snapshot.frames),))
    else:
        prompted = replace(turn, text=f"{frame_markers(view)}\n{turn.text}", images=turn.images + frames)
    kept = frames[-1:] if keep_last_frame else ()
    recorded = replace(turn, text=f"{summary(view)}\n{turn.text}", images=turn.images + kept)
    return prompted, recorded


def timeline_entry(turn: UserTurn, view: LiveView, recorded: UserTurn) -> LiveFramesShown:
    """The live turn as the session's timeline lays it out: each frame with its marker, before its text; and the
    history message it is recorded as, by which a later prompt knows it (gateway/core/live_timeline.py)."""
    frames = view.snapshot.frames
    markers = tuple(_marker(view.source, frame) for frame in frames)
    return LiveFramesShown(markers, tuple(frame.image for frame in frames), turn.text, turn.images, recorded.text)


def clip_entry(prompted: UserTurn, recorded: UserTurn) -> ClipsShown:
    """A live turn whose window was read as one clip (`live_turns` with `as_clip`), as the timeline shows it again:
    that clip after the turn's images, the summary and text before; its frames are held by the timeline, since the
    history message (`recorded`) holds none of them (but the last one, where kept)."""
    (clip,) = prompted.videos
    return ClipsShown(prompted.text, prompted.images, prompted.videos, recorded.text, frames=clip.frames)


def _marker(source: str, frame: LiveFrame) -> str:
    return f"[{source}, {frame.first_ts_ms / 1000:.3f} s]"
