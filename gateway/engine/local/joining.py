"""Prompts joining a decoding batch, prefilled a chunk at a time so the batch never waits for a whole prompt."""

from __future__ import annotations

import collections

from gateway.engine.local.joining_rows import JoiningRows
from gateway.engine.local.prefix_cache import HeldPrefix
from gateway.engine.local.prompt import ModelInputs
from gateway.engine.local.ragged import similar, suffix_groups
from gateway.engine.local.sequence import Sequence

Row = tuple[Sequence, ModelInputs, HeldPrefix | None]  # a prompt and its held prefix, if any

# Admissions that may pass a waiting prompt over (shorter ones going first) before it goes ahead of every
# prompt that waited less. scripts/live_profile.py against the rule before (docs/engine.md): at 1, live turns'
# TTFT p99 0.81x and text turns' 1.55x (a short prompt arriving during a burst of live clips waits behind
# those passed over); at 2, text p99 better than before, live p50 and p99 no better. Issue 23 is the live turns.
PATIENCE = 1


class Joining:
    """The prompts (text, and image prompts spliced into embeddings: engine/local/embed_rows.py) whose prefill
    is under way beside a decoding batch: one set of rows however many steps apart they arrived, and the
    prompts waiting to join it. Each step one pass feeds every row its share of `chunk_tokens` columns, then
    the batch decodes its next token: a decode step waits for one pass at most, however many prompts join.
    With nobody decoding the rows are fed whole (chunks would only add passes); `chunk_tokens` 0 turns
    chunking off (joiners then prefill whole, as when idle: text prompts in their own groups, image prompts
    here, all in one pass)."""

    def __init__(self, chunk_tokens: int, warm_up_chunk_tokens: int = 0) -> None:
        self.chunk_tokens = chunk_tokens
        # A warm-up's share of a pass, at most (0: a chunk's): it fills idle time, and a turn arriving waits for
        # that pass (engine/local/generation.py gives warm-ups' rows up to turns between passes).
        self.warm_up_chunk_tokens = min(warm_up_chunk_tokens or chunk_tokens, chunk_tokens)
        self.rows = JoiningRows()
        self.waiting: collections.deque[Row] = collections.deque()  # in arrival order
        self.passed_over: dict[int, int] = {}  # id() of each waiting prompt -> admissions that left it waiting

    def __len__(self) -> int:
        return len(self.rows) + len(self.waiting)

    def sequences(self) -> list[Sequence]:
        return [*self.rows.seqs, *self.waiting_sequences()]

    def waiting_sequences(self) -> list[Sequence]:
        return [seq for seq, _, _ in self.waiting]

    def keep_waiting(self, live: list[int]) -> None:
        """Drop every waiting prompt not listed (cancelled before it joined)."""
        self.waiting = collections.deque(self.waiting[i] for i in live)
        self.passed_over = {id(row): self.passed_over.get(id(row), 0) for row in self.waiting}

    def merges(self, decoding: bool) -> bool:
        """Whether prompts admitted now join the rows: only beside a decoding batch, with chunking on."""
        return decoding and self.chunk_tokens > 0

    def long(self, new_tokens: int) -> bool:
        """Whether a prompt of `new_tokens` is fed a chunk at a time even when nobody decodes (`chunked`)."""
        return 0 < self.chunk_tokens < new_tokens

    def long_row(self, row: Row) -> bool:
        """Whether a prompt is fed a chunk at a time even when nobody decodes: `long`, or a warm-up past its chunk."""
        return self._too_long(row[0], new_tokens(row))

    def _too_long(self, seq: Sequence, left: int) -> bool:
        if seq.request.warm_up:
            return 0 < self.warm_up_chunk_tokens < left
        return self.long(left)

    def chunked(self, decoding: bool) -> bool:
        """Whether the rows are fed a chunk per step (and joined by `admit`'s rules): beside a decoding batch, and
        also when nobody decodes but a prompt fed or waiting is longer than a chunk. Fed whole, that prompt's one
        pass would hold every turn arriving meanwhile for all of it: eight live sessions' prompts re-prefilled
        together after their histories were trimmed were one pass of 12,000 columns, 7.9 s, in `gateway bench
        --live --seconds 240`. A chunk at a time, turns arriving between two chunks are taken at the next step."""
        if self.chunk_tokens <= 0:
            return False
        fed = any(self._too_long(seq, len(ids)) for seq, ids in zip(self.rows.seqs, self.rows.ids))
        return decoding or fed or any(self.long_row(row) for row in self.waiting)

    def admit(self, chunked: bool) -> list[Row]:
        """The waiting prompts that join the rows now: all unless the rows are `chunked` (nobody decodes and no
        prompt is longer than a chunk, or chunking is off: they are fed whole together). Else they
        are taken in turn, those passed over PATIENCE times first (in arrival order), then the others shortest
        first: the first when no row is fed, whatever its length, and each other one that fits beside the
        rows (`_fits`: the next pass still feeds every row all it has left within `chunk_tokens`, none padded
        past twice its tokens). So a prompt joining beside others ends in its first pass and shortens no
        row's share; the rows end together at least every ceil(longest left / chunk_tokens) passes (nothing
        joins beside a row longer than half a chunk), and then the first in turn joins. A short prompt arriving
        with long ones goes ahead of them; one arriving while a long one is fed waits for that pass rather
        than share it padded to the long one's width. A prompt passed over PATIENCE times is overtaken only
        by older ones passed over as often and by prompts fitting beside the rows, which delay it by no pass."""
        if not chunked or self.chunk_tokens <= 0:
            everyone, self.waiting = list(self.waiting), collections.deque()
            return everyone
        aged = [self.passed_over.get(id(row), 0) >= PATIENCE for row in self.waiting]
        fresh = sorted((row for row, old in zip(self.waiting, aged) if not old), key=new_tokens)
        order = [row for row, old in zip(self.waiting, aged) if old] + fresh
        left = [len(ids) for ids in self.rows.ids]
        taken: list[Row] = []
        for row in order:
            if not left or _fits(left, new_tokens(row), self.chunk_tokens):
                left.append(new_tokens(row))
                taken.append(row)
        joined = {id(row) for row in taken}
        self.waiting = collections.deque(row for row in self.waiting if id(row) not in joined)
        self.passed_over = {id(row): self.passed_over.get(id(row), 0) + 1 for row in self.waiting}
        return taken

    def tower_apart(self, decoding: bool, admitted: list[Row]) -> bool:
        """Whether the vision tower for the image prompts admitted now is a step's pass of its own beside a
        decoding batch: when their new images' tokens exceed half a chunk (vLLM's encoder budget). A smaller
        tower runs in the step of their first chunk, saving them a decode step; a bigger one would make the
        running turns wait for it and a chunk together."""
        tower = sum(new_image_tokens(inputs, held.length if held else 0) for _, inputs, held in admitted if inputs.extras)
        return decoding and self.chunk_tokens > 0 and tower > self.chunk_tokens // 2

    def columns(self, chunked: bool) -> int | None:
        """Prompt columns per row in the next pass: the chunk's tokens shared among the rows; all unless
        `chunked`."""
        if not chunked or self.chunk_tokens <= 0:
            return None
        if self.rows.seqs and all(seq.request.warm_up for seq in self.rows.seqs):  # only when idle: one at a time
            return max(1, self.warm_up_chunk_tokens)
        return max(1, self.chunk_tokens // max(1, len(self.rows)))


def _fits(left: list[int], new: int, chunk_tokens: int) -> bool:
    """Whether a prompt of `new` tokens joins rows with `left` tokens each: the next pass still feeds every row
    all it has left within the chunk, and no row is padded to more than twice its tokens (ragged.similar)."""
    longest, shortest = max(*left, new), min(*left, new)
    return (len(left) + 1) * longest <= chunk_tokens and similar(shortest, longest)


def new_tokens(row: Row) -> int:
    """A prompt's tokens after its held prefix."""
    return row[1].prompt_tokens - (row[2].length if row[2] else 0)


def new_image_tokens(inputs: ModelInputs, start: int) -> int:
    """The tokens of a prompt's images and clips that begin at or after token `start` (not held as KV): what
    the vision tower encodes for it, at most (the encoder cache may hold some). Without a layout, every token
    after `start`."""
    layout = inputs.layout
    if layout is None:
        return inputs.prompt_tokens - start
    return sum(last - first for first, last in (*layout.spans, *layout.videos) if first >= start)


def split(rows: list[Row]) -> tuple[list[Sequence], list[ModelInputs], list[HeldPrefix | None]]:
    return [seq for seq, _, _ in rows], [item for _, item, _ in rows], [held for _, _, held in rows]


def text_groups(rows: list[Row], max_batch: int) -> list[list[Row]]:
    """Text prompts in groups for one forward pass each: of similar new lengths (engine/local/ragged.py); one
    at a time when turns decode alone."""
    if max_batch <= 1:
        return [[row] for row in rows]
    return [[rows[i] for i in group] for group in suffix_groups([new_tokens(row) for row in rows])]
