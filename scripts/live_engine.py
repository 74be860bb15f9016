"""What a turn waited on inside the engine, from its admission to its first token: the generation thread's work in that
interval (its own vision tower and prefill passes, other turns' passes, decode steps, joins), stamped in the gateway's
process by scripts/live_profile.py and read per turn against scripts/live_stages.py's stamps.

Every piece of the generation thread's work is a span (start, end, kind, the turns it served), so the time between a
turn's admission and its first token splits exactly into those spans and the gaps between them."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

Span = tuple[float, float, str, tuple[str, ...]]  # start, end, kind, the turn ids it fed


class Timeline:
    """The generation thread's spans, and each turn's admission and entry into the joining rows."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.turn_of: dict[int, str] = {}  # id(GenerationRequest) -> turn id
        self.marks: dict[str, dict[str, float]] = defaultdict(dict)

    def turns(self, seqs: list[Any]) -> tuple[str, ...]:
        return tuple(self.turn_of.get(id(seq.request), "?") for seq in seqs)

    def mark(self, seqs: list[Any], name: str) -> None:
        now = time.perf_counter()
        for turn in self.turns(seqs):
            self.marks[turn].setdefault(name, now)


def install(timeline: Timeline, turn_id: Callable[[], str | None]) -> None:
    """Wrap the engine's submission (to learn each request's turn id), admission, the joining rows' admission, and
    every pass the generation thread runs."""
    from gateway.engine.local import batch as batch_module, engine, generation, joining

    original_submit = engine.LocalEngine.submit

    def submit(self: Any, request: Any, sink: Any) -> Any:
        turn = turn_id()
        if turn is not None:
            timeline.turn_of[id(request)] = turn
        return original_submit(self, request, sink)

    engine.LocalEngine.submit = submit  # type: ignore[method-assign]

    original_sequence = generation.Generation._sequence

    def sequence(self: Any, job: Any) -> Any:
        seq = original_sequence(self, job)
        timeline.mark([seq], "admitted")
        return seq

    generation.Generation._sequence = sequence  # type: ignore[method-assign]

    original_admit = joining.Joining.admit

    def admit(self: Any, decoding: bool) -> Any:
        taken = original_admit(self, decoding)
        timeline.mark([row[0] for row in taken], "rows")
        return taken

    joining.Joining.admit = admit  # type: ignore[method-assign]

    def span(kind: str, seqs_of: Callable[[tuple[Any, ...]], list[Any]]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def timed(self: Any, *args: Any) -> Any:
                turns = timeline.turns(seqs_of((self, *args)))  # before the call: a pass takes finished rows away
                start = time.perf_counter()
                try:
                    return original(self, *args)
                finally:
                    timeline.spans.append((start, time.perf_counter(), kind, turns))

            return timed

        return wrap

    b = batch_module.Batch
    b.splice = span("vision tower (joining)", lambda a: [a[1]])(b.splice)  # type: ignore[method-assign]
    b.feed_joiners = span("chunk pass", lambda a: list(a[1].seqs))(b.feed_joiners)  # type: ignore[method-assign]
    b.feed_rows = span("text rows pass", lambda a: list(a[1].seqs))(b.feed_rows)  # type: ignore[method-assign]
    b.prefill = span("prefill alone", lambda a: [a[1]])(b.prefill)  # type: ignore[method-assign]
    b.prefill_on = span("prefill alone", lambda a: [a[1]])(b.prefill_on)  # type: ignore[method-assign]
    b.decode = span("decode step", lambda a: list(a[0].sequences))(b.decode)  # type: ignore[method-assign]
    b.join = span("join the batch", lambda a: list(a[1]))(b.join)  # type: ignore[method-assign]
    g = generation.Generation
    g._prefill = span("admit: build prompts", lambda a: [])(g._prefill)  # type: ignore[method-assign]


def waited_on(timeline: Timeline, turn: str, first_token: float) -> dict[str, float] | None:
    """A turn's engine time from admission to first token in ms, split by what the generation thread was doing:
    its own passes, other turns' passes by kind, and the rest (bookkeeping between spans); with its wait for a
    batch place (`queue`) and for the joining rows (`rows`) as their own lines."""
    marks = timeline.marks.get(turn)
    if not marks or "admitted" not in marks:
        return None
    start = marks["admitted"]
    row: dict[str, float] = defaultdict(float)
    covered = 0.0
    for s, e, kind, turns in timeline.spans:
        if kind == "admit: build prompts":
            continue  # it encloses the passes it runs: counted by them
        lo, hi = max(s, start), min(e, first_token)
        if hi <= lo:
            continue
        label = f"own {kind}" if turn in turns else f"others' {kind}"
        row[label] += (hi - lo) * 1000
        covered += hi - lo
    row["between passes"] = max(0.0, (first_token - start) - covered) * 1000
    row["total from admission"] = (first_token - start) * 1000
    if "rows" in marks:
        row["wait to join the rows"] = (marks["rows"] - start) * 1000
    row["decode steps waited"] = sum(
        1 for s, e, kind, _ in timeline.spans if kind == "decode step" and s >= start and e <= first_token
    )
    return dict(row)


def summary(timeline: Timeline, first_tokens: dict[str, tuple[str, float, float]]) -> dict[str, Any]:
    """Per kind of turn, the mean and median of each line of `waited_on`; `first_tokens` maps turn id to (kind,
    submitted, first token) on the gateway's clock."""
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for turn, (kind, submitted, first) in first_tokens.items():
        row = waited_on(timeline, turn, first)
        if row is None:
            continue
        row["queue for a batch place"] = (timeline.marks[turn]["admitted"] - submitted) * 1000
        rows[kind].append(row)
    out: dict[str, Any] = {}
    for kind, kind_rows in sorted(rows.items()):
        labels = sorted({label for r in kind_rows for label in r})
        out[kind] = {"turns": len(kind_rows)}
        for label in labels:
            values = sorted(r.get(label, 0.0) for r in kind_rows)
            out[kind][label] = {"mean": round(sum(values) / len(values), 1), "p50": round(values[len(values) // 2], 1)}
    return out
