"""The batch's left-padded KV cache: which caches merge, padding, a finished row's states held, the self-attention layers."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from gateway.engine.local import cross, kv
from gateway.engine.local.image_prefix import whole_pictures
from gateway.engine.local.prefix_cache import LayerStates, PrefixCache
from gateway.engine.local.sequence import Sequence

log = logging.getLogger("gateway.engine")

_MERGEABLE = (kv.GrowingLayer, cross.CrossLayer)


def supports_batching(cache: Any) -> bool:
    """Only plain growing caches can be padded and merged; sliding-window or quantized ones cannot."""
    return isinstance(cache, DynamicCache) and all(type(layer) in _MERGEABLE for layer in cache.layers)


def row_states(cache: Any, mask: torch.Tensor, row: int) -> LayerStates:
    """One row's real (unpadded) keys and values per layer, copied out of a shared left-padded cache.
    Real columns are always a row's rightmost ones: padding only ever goes on the left."""
    start = mask.shape[1] - int(mask[row].sum().item())
    like = cache.layers[0].keys
    return [
        cross.row_states(layer, row, like)
        if isinstance(layer, cross.CrossLayer)
        else (layer.keys[row : row + 1, :, start:].clone(), layer.values[row : row + 1, :, start:].clone())
        for layer in cache.layers
    ]


def hold_finished(held: PrefixCache, seqs: list[Sequence], cache: Any, mask: Any, alive: list[int]) -> None:
    """Keep the KV of the sequences not `alive` (they just finished: prompt and every reply token fed; the last
    one sampled never was) for later prompts that start the same way."""
    try:
        for row in sorted(set(range(len(seqs))) - set(alive)):
            seq = seqs[row]
            if seq.prompt_ids is not None:
                ids = seq.prompt_ids + tuple(seq.token_ids[:-1])
                request = seq.request
                held.store(request.adapter, ids, row_states(cache, mask, row), once=request.warm_up, owner=request.affinity)
    except Exception:  # holding is an optimisation: a failure (out of memory) costs a later prefill only
        log.exception("holding a finished turn's KV failed")
        held.clear()


def hold_fed(held: PrefixCache, seq: Sequence, cache: Any, mask: torch.Tensor, row: int) -> None:
    """Keep what a joining row's prompt was fed so far (its held prefix first), up to the last picture it holds
    whole, for the prompt that goes on from there: a warm-up that gave way to turns before its prefill ended
    (engine/local/generation.py). Held once, as a warm-up's: its next run, or its session's turn, takes it."""
    key, fed = seq.prompt_ids, int(mask[row].sum().item())
    length = whole_pictures(key, fed) if key is not None else 0
    if key is None or length <= 0 or any(isinstance(layer, cross.CrossLayer) for layer in cache.layers):
        return
    start = mask.shape[1] - fed  # real columns are the row's rightmost ones
    try:
        states = [
            (
                layer.keys[row : row + 1, :, start : start + length].clone(),
                layer.values[row : row + 1, :, start : start + length].clone(),
            )
            for layer in cache.layers
        ]
        held.store(seq.request.adapter, key[:length], states, once=True, owner=seq.request.affinity)
    except Exception:  # holding is an optimisation: a failure (out of memory) costs a later prefill only
        log.exception("holding a warm-up's KV failed")
        held.clear()


def self_attention(cache: Any) -> list[Any]:
    """The layers whose states follow the text (left-padded, trimmed); cross-attention ones follow images."""
    return [layer for layer in cache.layers if not isinstance(layer, cross.CrossLayer)]


def pad_left(cache: Any, n: int) -> None:
    """Put `n` columns of padding before every row's text states."""
    for layer in self_attention(cache):
        layer.keys = _zeros_before(layer.keys, n)
        layer.values = _zeros_before(layer.values, n)


def _zeros_before(states: torch.Tensor, n: int) -> torch.Tensor:
    batch, heads, _, dim = states.shape
    return torch.cat([states.new_zeros(batch, heads, n, dim), states], dim=2)


def cache_of(output: Any) -> Any:
    """The cache a forward pass returned."""
    # transformers 5 renamed the output field from past_key_values to cache
    return output["cache"] if "cache" in output else output["past_key_values"]
