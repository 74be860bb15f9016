"""Prompts joining a decoding batch, prefilled a chunk at a time so the batch never waits for a whole prompt."""

from __future__ import annotations

import collections

from gateway.engine.local.joining_rows import JoiningRows
from gateway.engine.local.prefix_cache import HeldPrefix
from gateway.engine.local.prompt import ModelInputs
from gateway.engine.local.ragged import suffix_groups
from gateway.engine.local.sequence import Sequence

Row = tuple[Sequence, ModelInputs, HeldPrefix | None]  # a prompt and its held prefix, if any


class Joining:
    """The prompts (text, and image prompts spliced into embeddings: engine/local/embed_rows.py) whose prefill
    is under way beside a decoding batch: one set of rows however many steps apart they arrived, and the
    prompts waiting to join it. Each step one pass feeds every row its share of `chunk_tokens` columns, then
    the batch decodes its next token: a decode step waits for one pass at most, however many prompts join.
    With nobody decoding the rows are fed whole (chunks would only add passes); `chunk_tokens` 0 turns
    chunking off (joiners then prefill whole, as when idle: text prompts in their own groups, image prompts
    here, all in one pass)."""

    def __init__(self, chunk_tokens: int) -> None:
        self.chunk_tokens = chunk_tokens
        self.rows = JoiningRows()
        self.waiting: collections.deque[Row] = collections.deque()

    def __len__(self) -> int:
        return len(self.rows) + len(self.waiting)

    def sequences(self) -> list[Sequence]:
        return [*self.rows.seqs, *self.waiting_sequences()]

    def waiting_sequences(self) -> list[Sequence]:
        return [seq for seq, _, _ in self.waiting]

    def keep_waiting(self, live: list[int]) -> None:
        """Drop every waiting prompt not listed (cancelled before it joined)."""
        self.waiting = collections.deque(self.waiting[i] for i in live)

    def merges(self, decoding: bool) -> bool:
        """Whether prompts admitted now join the rows: only beside a decoding batch, with chunking on."""
        return decoding and self.chunk_tokens > 0

    def admit(self, decoding: bool) -> list[Row]:
        """The waiting prompts that join the rows now, in arrival order: all once nobody decodes; else the
        first while no row is fed, and each whose new tokens fit its share of the next pass. A short prompt
        never waits behind a long one, and long ones take their turns rather than all slowing down together."""
        taken: list[Row] = []
        left: collections.deque[Row] = collections.deque()
        for row in self.waiting:
            rows = len(self.rows) + len(taken)
            new = row[1].prompt_tokens - (row[2].length if row[2] else 0)
            fits = not decoding or not rows or self.chunk_tokens <= 0 or new <= self.chunk_tokens // (rows + 1)
            (taken if fits else left).append(row)
        self.waiting = left
        return taken

    def columns(self, decoding: bool) -> int | None:
        """Prompt columns per row in the next pass: the chunk's tokens shared among the rows; all once
        nobody decodes."""
        return max(1, self.chunk_tokens // max(1, len(self.rows))) if decoding and self.chunk_tokens > 0 else None


def split(rows: list[Row]) -> tuple[list[Sequence], list[ModelInputs], list[HeldPrefix | None]]:
    return [seq for seq, _, _ in rows], [item for _, item, _ in rows], [held for _, _, held in rows]


def text_groups(rows: list[Row], max_batch: int) -> list[list[Row]]:
    """Text prompts in groups for one forward pass each: of similar new lengths (engine/local/ragged.py); one
    at a time when turns decode alone."""
    if max_batch <= 1:
        return [[row] for row in rows]
    suffixes = [inputs.prompt_tokens - (held.length if held else 0) for _, inputs, held in rows]
    return [[rows[i] for i in group] for group in suffix_groups(suffixes)]
