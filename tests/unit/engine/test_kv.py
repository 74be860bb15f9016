"""GrowingLayer: appends in place with room to grow, reads as transformers' DynamicLayer would."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from gateway.engine.local.kv import MAX_GROWTH, MIN_GROWTH, GrowingLayer, new_cache


def states(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, tokens, 4, generator=generator), torch.randn(2, 3, tokens, 4, generator=generator)


def test_updates_read_back_as_concatenation_does() -> None:
    """A prefill then many one-token steps: every returned view equals DynamicLayer's concatenation."""
    growing, plain = GrowingLayer(), DynamicLayer()  # type: ignore[no-untyped-call]
    for step, tokens in enumerate([5, *[1] * (3 * MIN_GROWTH)]):
        keys, values = states(tokens, step)
        got = growing.update(keys, values)
        want = plain.update(keys, values)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert growing.get_seq_length() == plain.get_seq_length() == 5 + 3 * MIN_GROWTH
    assert growing.keys is not None and torch.equal(growing.keys, plain.keys)


def test_steps_write_in_place_until_the_buffer_is_full() -> None:
    """A prefill is stored at its exact size; the first step grows the buffer by a bounded share, and
    the steps after it write in place (no copy per token) until it is full."""
    layer = GrowingLayer()
    layer.update(*states(10, 0))
    assert layer.capacity() == 10
    first = layer.update(*states(1, 1))[0]
    buffer = layer.capacity()
    assert buffer == 11 + MIN_GROWTH
    second = layer.update(*states(1, 2))[0]
    assert first.data_ptr() == second.data_ptr()  # the same storage: written in place
    for step in range(buffer - 12):
        layer.update(*states(1, 3 + step))
    assert layer.capacity() == buffer and layer.get_seq_length() == buffer
    layer.update(*states(1, 99))
    assert layer.capacity() > buffer and layer.get_seq_length() == buffer + 1


def test_growth_is_bounded_for_long_histories() -> None:
    """A 10K-token row grows by MAX_GROWTH tokens, not by a quarter of itself."""
    layer = GrowingLayer()
    layer.update(torch.zeros(1, 1, 10_000, 2), torch.zeros(1, 1, 10_000, 2))
    layer.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    assert layer.capacity() == 10_001 + MAX_GROWTH


def test_assigned_states_are_never_written_to() -> None:
    """A held prefix's tensors (or any assigned ones) are read, then copied on the next update: a turn
    built on a held prefix cannot change what is held."""
    held_keys, held_values = states(8, 0)
    kept_keys, kept_values = held_keys.clone(), held_values.clone()
    layer = GrowingLayer()
    layer.lazy_initialization(held_keys, held_values)
    layer.keys, layer.values = held_keys[:, :, :6], held_values[:, :, :6]
    keys, values = layer.update(*states(3, 1))
    assert keys.shape[2] == values.shape[2] == 9 and torch.equal(keys[:, :, :6], held_keys[:, :, :6])
    assert torch.equal(held_keys, kept_keys) and torch.equal(held_values, kept_values)


def test_keys_and_values_assigned_one_after_the_other_keep_their_own_lengths() -> None:
    """Left-padding assigns keys, then values: in between, values must still read as they were."""
    layer = GrowingLayer()
    layer.update(*states(4, 0))
    old_values = layer.values
    assert old_values is not None
    layer.keys = torch.zeros(2, 3, 7, 4)
    assert layer.values is not None and torch.equal(layer.values, old_values)
    layer.values = torch.ones(2, 3, 7, 4)
    keys, values = layer.update(*states(1, 1))
    assert keys.shape[2] == values.shape[2] == 8 and torch.equal(values[:, :, :7], torch.ones(2, 3, 7, 4))


def test_selecting_rows_and_resetting_behave_as_dynamic_layer() -> None:
    """Rows leave the batch through batch_select_indices; reset empties the layer."""
    layer = GrowingLayer()
    keys, values = states(6, 0)
    layer.update(keys, values)
    layer.batch_select_indices(torch.tensor([1]))
    assert layer.keys is not None and torch.equal(layer.keys, keys[1:2])
    grown = layer.update(torch.zeros(1, 3, 1, 4), torch.zeros(1, 3, 1, 4))
    assert grown[0].shape == (1, 3, 7, 4)
    layer.reset()
    assert layer.get_seq_length() == 0


def test_the_cache_creates_growing_layers() -> None:
    cache = new_cache()
    cache.update(*states(2, 0), layer_idx=1)
    assert [type(layer) for layer in cache.layers] == [GrowingLayer, GrowingLayer]
