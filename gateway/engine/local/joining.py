"""Text prompts joining a decoding batch, prefilled a chunk at a time so the batch never waits for a whole prompt."""

from __future__ import annotations

import collections

from gateway.engine.local.ragged import RowsPrefill
from gateway.engine.local.sequence import Sequence


class Joining:
    """Row groups whose prefill is under way beside a decoding batch. Each step feeds one chunk of the oldest
    group, about `chunk_tokens` prompt tokens over its rows, then the batch decodes its next token: a decode
    step waits for one chunk at most, where it used to wait for every joiner's whole prompt. With nobody
    decoding, groups are fed whole (chunks would only add passes); `chunk_tokens` 0 turns chunking off."""

    def __init__(self, chunk_tokens: int) -> None:
        self.chunk_tokens = chunk_tokens
        self.groups: collections.deque[RowsPrefill] = collections.deque()

    def __len__(self) -> int:
        return sum(len(rows.seqs) for rows in self.groups)

    def sequences(self) -> list[Sequence]:
        return [seq for rows in self.groups for seq in rows.seqs]

    def defers(self, rows: RowsPrefill, decoding: bool) -> bool:
        """Whether `rows` wait for chunks: only beside a decoding batch, and only when longer than one."""
        return decoding and self.chunk_tokens > 0 and rows.left > self.columns(rows)

    def columns(self, rows: RowsPrefill) -> int:
        """Prompt columns per chunk: the chunk's tokens shared among the group's rows."""
        return max(1, self.chunk_tokens // max(1, len(rows.seqs)))
