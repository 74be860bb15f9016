"""Text prompts joining a decoding batch, prefilled a chunk at a time so the batch never waits for a whole prompt."""

from __future__ import annotations

from gateway.engine.local.joining_rows import JoiningRows
from gateway.engine.local.sequence import Sequence


class Joining:
    """The text prompts whose prefill is under way beside a decoding batch, as one set of rows however many
    steps apart they arrived. Each step one pass feeds every row its share of `chunk_tokens` columns, then
    the batch decodes its next token: a decode step waits for one pass at most, where it used to wait for
    every joiner's prompt, or for one pass per joiner. With nobody decoding the rows are fed whole (chunks
    would only add passes); `chunk_tokens` 0 turns chunking off (joiners then prefill whole, as when idle)."""

    def __init__(self, chunk_tokens: int) -> None:
        self.chunk_tokens = chunk_tokens
        self.rows = JoiningRows()

    def __len__(self) -> int:
        return len(self.rows)

    def sequences(self) -> list[Sequence]:
        return list(self.rows.seqs)

    def merges(self, decoding: bool) -> bool:
        """Whether prompts admitted now join the rows: only beside a decoding batch, with chunking on."""
        return decoding and self.chunk_tokens > 0

    def columns(self, decoding: bool) -> int | None:
        """Prompt columns per row in the next pass: the chunk's tokens shared among the rows; all once
        nobody decodes."""
        return max(1, self.chunk_tokens // max(1, len(self.rows))) if decoding else None
