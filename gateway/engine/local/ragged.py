"""Text prompts on held prefixes of different lengths, laid out for one left-padded forward pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gateway.engine.local import kv
from gateway.engine.local.prefix_cache import HeldPrefix

# A group is fed its longest new part; rows with shorter ones are padded (or feed held tokens again), which
# costs as much as real tokens. Rows join a group while its longest part is at most twice its shortest plus
# this many tokens: one pass still beats one per row, and a cold prompt does not make 15 one-token warm
# continuations each pay for its whole length.
GROUP_SLACK_TOKENS = 32

Positions = Callable[[torch.Tensor], tuple[torch.Tensor, int]]  # one prompt's ids [1, n] -> positions, offset


@dataclass
class RowsLayout:
    """One forward pass's inputs: each row's cached part sits right-aligned in columns [0, width) of the
    cache, its fed part right-aligned in the `fed` input columns after it, so every row's real columns are
    contiguous and rightmost, as the batch's left padding wants."""

    input_ids: torch.Tensor  # [rows, fed]
    mask: torch.Tensor  # [rows, width + fed], 1 for real columns
    positions: torch.Tensor  # [rows, fed], or [3, rows, fed] for multimodal rotary positions
    cached: list[int]  # per row, prompt tokens whose KV comes from its held prefix
    deltas: list[int]  # per row, what its positions add to its token count
    width: int  # cached columns


def similar(shorter: int, longer: int) -> bool:
    """Whether a row of `shorter` new tokens may be padded to `longer` in one pass (see GROUP_SLACK_TOKENS)."""
    return longer <= 2 * shorter + GROUP_SLACK_TOKENS


def suffix_groups(suffixes: list[int]) -> list[list[int]]:
    """Row indices in groups of similar new-part lengths (see GROUP_SLACK_TOKENS), shortest first."""
    groups: list[list[int]] = []
    for row in sorted(range(len(suffixes)), key=suffixes.__getitem__):
        if groups and similar(suffixes[groups[-1][0]], suffixes[row]):
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def lay_out(prompts: list[torch.Tensor], held: list[int], positions_of: Positions, device: torch.device) -> RowsLayout:
    """Rows of `prompts` (ids [n]) over `held` leading tokens each: every row feeds the same number of
    columns, its new tokens, and where they are fewer than the longest row's, the last held tokens again
    rather than padding (same cost, and no hole in the row)."""
    fed = max(len(ids) - h for ids, h in zip(prompts, held))
    cached = [max(0, len(ids) - fed) for ids in prompts]
    width = max(cached)
    rows = len(prompts)
    input_ids = torch.zeros(rows, fed, dtype=torch.long, device=device)
    mask = torch.zeros(rows, width + fed, dtype=torch.long, device=device)
    pieces, deltas = [], []
    for row, (ids, start) in enumerate(zip(prompts, cached)):
        length = len(ids) - start
        input_ids[row, fed - length :] = ids[start:].to(device)
        mask[row, width + fed - len(ids) :] = 1
        full, delta = positions_of(ids.view(1, -1).to(device))
        pieces.append(full[..., start:])
        deltas.append(delta)
    shape = (*pieces[0].shape[:-2], rows, fed)
    positions = torch.zeros(shape, dtype=pieces[0].dtype, device=device)
    for row, piece in enumerate(pieces):
        positions[..., row : row + 1, fed - piece.shape[-1] :] = piece
    return RowsLayout(input_ids, mask, positions, cached, deltas, width)


def held_cache(helds: list[HeldPrefix | None], layout: RowsLayout, device: torch.device) -> Any:
    """A cache whose rows hold their first `cached` held tokens right-aligned before column `width`, in
    buffers with room for the fed columns, so the forward pass writes them without growing."""
    cache = kv.new_cache()
    if layout.width == 0:
        return cache
    example = next(h for h, c in zip(helds, layout.cached) if h is not None and c > 0).layers
    room = layout.width + layout.input_ids.shape[1]
    for index, (keys, values) in enumerate(example):
        buffers = []
        for states in (keys, values):
            _, heads, _, dim = states.shape
            buffer = torch.zeros(len(helds), heads, room, dim, dtype=states.dtype, device=device)
            for row, (held, count) in enumerate(zip(helds, layout.cached)):
                if held is not None and count:
                    source = held.layers[index][0 if states is keys else 1]
                    buffer[row, :, layout.width - count : layout.width] = source[0, :, :count].to(device)
            buffers.append(buffer)
        cache.layers.append(kv.GrowingLayer.holding(buffers[0], buffers[1], layout.width))
    return cache


@dataclass
class RowsPrefill:
    """Text prompt rows laid out for one pass (see `Batch.feed_rows`): their layout and held cache."""

    seqs: list[Any]  # the rows' Sequences
    layout: RowsLayout
    cache: Any
