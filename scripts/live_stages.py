"""A turn's time to first token stage by stage, stamped in the gateway's process and read beside the bench client's.

Both processes stamp with `time.perf_counter`, which on Linux is CLOCK_MONOTONIC, one clock for the machine, so a
stamp taken in the gateway and one taken by the client subtract. Each stage is the time between two consecutive
stamps of one turn, so the stages' means add up to the client's mean time to first token exactly."""

from __future__ import annotations

import contextvars
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

# (stage name, the stamp it ends at); each starts where the one before it ends, the first at the client's send
STAGES = (
    ("socket, and the reader busy with the session's earlier frames", "handle"),
    ("handler: live view, watch yield, turn lock", "start"),
    ("checks, attachments, the window's frames laid out", "loaded"),
    ("wait for the new frames processed ahead", "ahead"),
    ("process the new frames not processed yet", "prepared"),
    ("plan the prompt (count its tokens)", "planned"),
    ("submit", "submitted"),
    ("engine: queue, admission, prefill, first token", "first_token"),
    ("first token to the socket (event loop, journal, writer)", "written"),
    ("socket to the client", "received"),
)

Stamps = dict[str, dict[str, float]]
_turn: contextvars.ContextVar[str | None] = contextvars.ContextVar("turn", default=None)


def current_turn() -> str | None:
    """The id of the turn whose handling is under way in this task (None outside one)."""
    return _turn.get()


def install(stamps: Stamps, reader: dict[str, float]) -> None:
    """Wrap the gateway's turn path in this process: each wrapper stamps `stamps[turn id][stamp]`, and the reader's
    wait is kept in `reader[turn id]`: how long after the client sent the turn the reader was still handling the
    connection's frames before it (their decode and hash on the decode pool)."""
    from gateway.core import frames_ahead, session, turns
    from gateway.engine.local import engine
    from gateway.ws import connection, handlers, protocol as p

    def stamp(name: str) -> None:
        turn = _turn.get()
        if turn is not None:
            stamps[turn][name] = time.perf_counter()

    original_handle = handlers.FrameHandlers.handle

    async def handle(self: Any, frame: Any) -> None:
        if isinstance(frame, p.TurnFrame):
            stamps[frame.id]["handle"] = time.perf_counter()
            stamps[frame.id]["reader_free"] = getattr(self, "_profile_free", 0.0)
            token = _turn.set(frame.id)
            try:
                await original_handle(self, frame)
            finally:
                _turn.reset(token)
        else:
            await original_handle(self, frame)
        self._profile_free = time.perf_counter()

    handlers.FrameHandlers.handle = handle  # type: ignore[method-assign]
    after(turns.TurnService, "_start", lambda: stamp("start"), before=True)
    after(turns, "session_turns", lambda: stamp("loaded"))
    after(frames_ahead.FramesAhead, "ready", lambda: stamp("ahead"))
    after(engine.LocalEngine, "prepare", lambda: stamp("prepared"))
    after(session.Session, "plan", lambda: stamp("planned"))
    original_submit = engine.LocalEngine.submit

    def submit(self: Any, request: Any, sink: Any) -> Any:
        stamp("submitted")
        return original_submit(self, request, sink)

    engine.LocalEngine.submit = submit  # type: ignore[method-assign]
    original_send = connection.Connection._send

    async def send(self: Any, frame: Any) -> None:
        await original_send(self, frame)
        if isinstance(frame, p.TokenFrame) and "written" not in stamps[frame.id]:
            stamps[frame.id]["written"] = time.perf_counter()

    connection.Connection._send = send  # type: ignore[method-assign]


def after(owner: Any, name: str, mark: Callable[[], None], before: bool = False) -> None:
    """Wrap the coroutine function `owner.name` to call `mark` as it returns (or, `before`, as it is called)."""
    original = getattr(owner, name)

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before:
            mark()
        result = await original(*args, **kwargs)
        if not before:
            mark()
        return result

    setattr(owner, name, wrapped)


def breakdown(stamps: Stamps, turns: list[tuple[str, Any]]) -> dict[str, Any]:
    """Per kind of turn (live, text, and live turns after each session's first: the first reads its whole window,
    never processed ahead, on no held KV): the mean and median of each stage in ms, their sum (the client's mean
    TTFT), the reader's wait, and the tokens prefilled. `turns` are (kind, the client's TurnResult) with the
    gateway's `stamps` by turn id (bench/live.py names them kind, session, '.', number)."""
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for kind, result in turns:
        row = _row(stamps, result)
        if row is not None:
            rows[kind].append(row)
            if kind == "live" and not result.id.endswith(".1"):
                rows["live after the first"].append(row)
    return {kind: _summary(kind_rows) for kind, kind_rows in sorted(rows.items())}


def _row(stamps: Stamps, result: Any) -> dict[str, float] | None:
    """One turn's stages in ms, or None where a stamp is missing (a turn that failed)."""
    server = stamps.get(result.id)
    timing = (result.done or {}).get("timing") or {}
    if not server or not result.token_times or timing.get("ttft_ms") is None or "submitted" not in server:
        return None
    at = {"sent": result.sent_at, **server, "received": result.token_times[0]}
    at["first_token"] = at["submitted"] + timing["ttft_ms"] / 1000
    at.setdefault("ahead", at["loaded"])  # a text turn has no frames to wait for or to process
    at.setdefault("prepared", at["ahead"])
    row, previous = {}, at["sent"]
    for label, name in STAGES:
        row[label] = (at[name] - previous) * 1000
        previous = at[name]
    row["of which the reader was busy"] = max(0.0, min(at["reader_free"], at["handle"]) - at["sent"]) * 1000
    usage = result.done["usage"]
    row["prefilled tokens"] = usage["prompt_tokens"] - usage.get("cached_tokens", 0)
    return row


def _summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    def median(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2]

    stages = {
        label: {
            "mean_ms": round(sum(r[label] for r in rows) / len(rows), 1),
            "p50_ms": round(median([r[label] for r in rows]), 1),
        }
        for label in rows[0]
    }
    total = sum(stages[label]["mean_ms"] for label, _ in STAGES)  # "prefilled tokens" is a count, not a stage
    return {"turns": len(rows), "ttft_mean_ms": round(total, 1), "stages": stages}
