"""Prompts joining a decoding batch as one set of rows, each with its own columns left: one pass per step feeds them all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from gateway.engine.local import kv
from gateway.engine.local.prefix_cache import HeldPrefix

Places = list[tuple[torch.Tensor, int]]  # per prompt, its positions [..., 1, n] and what they add to its count
Leaving = tuple[list[Any], tuple[torch.Tensor, Any, torch.Tensor]]  # the rows whose prompts ended: seqs, (logits, cache, mask)


@dataclass
class Chunk:
    """One pass's inputs: each row's next columns left-aligned, right-padded where its prompt ends sooner."""

    input_ids: torch.Tensor  # [rows, columns]
    attention_mask: torch.Tensor  # [rows, width + columns]
    position_ids: torch.Tensor  # [rows, columns], or [3, rows, columns]
    fed: list[int]  # per row, real columns in this chunk
    embeds: dict[int, torch.Tensor] = field(default_factory=dict)  # image rows' input embeddings [fed, hidden]


@dataclass
class JoiningRows:
    """Every row's fed tokens (its held prefix first) sit right-aligned in the cache's columns, as the batch's
    left padding wants. A chunk feeds each row its next columns from the cache's end, so rows that arrived at
    different steps, with different held and new lengths, share one pass; a row whose prompt ends inside it
    leaves with its trailing padding cut, and every row that stays was fed the whole chunk: no row ever has
    padding after a real column."""

    seqs: list[Any] = field(default_factory=list)  # the rows' Sequences
    ids: list[torch.Tensor] = field(default_factory=list)  # per row, prompt ids not fed yet [left]
    positions: list[torch.Tensor] = field(default_factory=list)  # per row, their positions [..., 1, left]
    embeds: list[torch.Tensor | None] = field(default_factory=list)  # per row, an image prompt's embeddings [left, hidden]
    cache: Any = None
    mask: torch.Tensor | None = None  # [rows, width], 1 for real columns

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def add(
        self,
        seqs: list[Any],
        prompts: list[torch.Tensor],
        helds: list[HeldPrefix | None],
        places: Places,
        embeds: list[torch.Tensor | None] | None = None,
    ) -> None:
        """New rows, each on its whole held prefix (or none), nothing fed yet: a prompt's ids and positions
        (`places`, over the whole prompt), and an image prompt's embeddings of its tokens after the held
        prefix. The rows already here are copied once into wider buffers. The new rows count as here from
        the start, so that `clear` after a failure finds them."""
        device, old = prompts[0].device, len(self.seqs)
        self.seqs = self.seqs + seqs
        cached = [held.length if held else 0 for held in helds]
        for ids, start, (full, _) in zip(prompts, cached, places):
            self.ids.append(ids[start:])
            self.positions.append(full[..., start:])
        self.embeds.extend(embeds or [None] * len(seqs))
        width = max(self.width, *cached)
        mask = torch.zeros(len(self.seqs), width, dtype=torch.long, device=device)
        if self.mask is not None:
            mask[:old, width - self.width :] = self.mask
        for row, count in enumerate(cached, start=old):
            mask[row, width - count :] = 1
        self.cache = self._merged(old, helds, cached, width, device)
        self.mask = mask

    def _merged(self, old: int, helds: list[HeldPrefix | None], cached: list[int], width: int, device: torch.device) -> Any:
        """The rows here, then the new ones' held states, right-aligned at `width` in buffers with room for
        every prompt's columns left (the passes then write in place)."""
        cache = kv.new_cache()
        here = self.cache.layers if self.cache is not None else []
        examples = [held.layers for held, count in zip(helds, cached) if held is not None and count]
        if width == 0 or not (here or examples):
            return cache
        room = width + max(len(ids) for ids in self.ids)
        layers = [(layer.keys, layer.values) for layer in here] if here else examples[0]
        for index, pair in enumerate(layers):
            buffers = []
            for part, states in enumerate(pair):
                _, heads, _, dim = states.shape
                buffer = torch.zeros(len(self.ids), heads, room, dim, dtype=states.dtype, device=device)
                if here:
                    buffer[:old, :, width - self.width : width] = states
                for row, (held, count) in enumerate(zip(helds, cached), start=old):
                    if held is not None and count:
                        buffer[row, :, width - count : width] = held.layers[index][part][0, :, :count].to(device)
                buffers.append(buffer)
            cache.layers.append(kv.GrowingLayer.holding(buffers[0], buffers[1], width))
        return cache

    def chunk(self, columns: int | None) -> Chunk:
        """The next pass's inputs: `columns` per row at most (None: every column left)."""
        assert self.mask is not None
        longest = max(len(ids) for ids in self.ids)
        width = longest if columns is None else min(columns, longest)
        fed = [min(len(ids), width) for ids in self.ids]
        rows, device = len(self.seqs), self.mask.device
        input_ids = torch.zeros(rows, width, dtype=torch.long, device=device)
        mask = torch.zeros(rows, width, dtype=torch.long, device=device)
        positions = torch.zeros((*self.positions[0].shape[:-2], rows, width), dtype=self.positions[0].dtype, device=device)
        embeds = {}
        for row, (ids, place, count, embedded) in enumerate(zip(self.ids, self.positions, fed, self.embeds)):
            if embedded is None:
                input_ids[row, :count] = ids[:count]
            else:  # its placeholders' ids stay 0: the embeddings stand for them
                embeds[row] = embedded[:count]
            positions[..., row, :count] = place[..., 0, :count]
            mask[row, :count] = 1
        return Chunk(input_ids, torch.cat([self.mask, mask], dim=1), positions, fed, embeds)

    def advance(self, chunk: Chunk, cache: Any, logits: torch.Tensor) -> Leaving | None:
        """After `chunk`'s pass (its `cache`, its `logits` [rows, columns, vocab]): the rows whose prompts
        ended leave with their first-token logits, KV and mask; the others keep theirs for the next chunk."""
        ended = [row for row, count in enumerate(chunk.fed) if count == len(self.ids[row])]
        leaving = _leaving(ended, chunk, cache, logits) if ended else None
        staying = [row for row in range(len(self.seqs)) if row not in ended]
        for row in staying:
            self.ids[row], self.positions[row] = self.ids[row][chunk.fed[row] :], self.positions[row][..., chunk.fed[row] :]
            embedded = self.embeds[row]
            self.embeds[row] = None if embedded is None else embedded[chunk.fed[row] :]
        self.cache, self.mask = cache, chunk.attention_mask
        seqs = [self.seqs[row] for row in ended]
        self.keep(staying)
        return (seqs, leaving) if leaving is not None else None

    def keep(self, rows: list[int]) -> None:
        """Drop every row not listed (ended, or cancelled between chunks)."""
        if len(rows) == len(self.seqs):
            return
        self.seqs = [self.seqs[row] for row in rows]
        self.ids = [self.ids[row] for row in rows]
        self.positions = [self.positions[row] for row in rows]
        self.embeds = [self.embeds[row] for row in rows]
        if not rows:
            self.cache = self.mask = None
            return
        assert self.mask is not None
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask[index]
        if self.cache is not None and self.cache.layers:
            self.cache.batch_select_indices(index)

    def clear(self) -> list[Any]:
        """Drop every row (after a failed pass); return their Sequences."""
        seqs = self.seqs
        self.keep([])
        return seqs


def _leaving(ended: list[int], chunk: Chunk, cache: Any, logits: torch.Tensor) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """The ended rows as one prefill's result: each row's real columns (up to its last fed one) right-aligned
    in buffers as wide as the longest, its logits at its last fed column."""
    start = chunk.attention_mask.shape[1] - chunk.input_ids.shape[1]
    ends = [start + chunk.fed[row] for row in ended]
    lengths = [int(chunk.attention_mask[row, :end].sum().item()) for row, end in zip(ended, ends)]
    width = max(lengths)
    mask = torch.zeros(len(ended), width, dtype=torch.long, device=logits.device)
    out = kv.new_cache()
    for layer in cache.layers:
        pair = []
        for states in (layer.keys, layer.values):
            _, heads, _, dim = states.shape
            rows = states.new_zeros(len(ended), heads, width, dim)
            for place, (row, end, length) in enumerate(zip(ended, ends, lengths)):
                rows[place, :, width - length :] = states[row, :, end - length : end]
            pair.append(rows)
        out.layers.append(kv.GrowingLayer.holding(pair[0], pair[1], width))
    for place, length in enumerate(lengths):
        mask[place, width - length :] = 1
    last = torch.tensor([chunk.fed[row] - 1 for row in ended], device=logits.device)
    return logits[torch.tensor(ended, device=logits.device), last], out, mask
