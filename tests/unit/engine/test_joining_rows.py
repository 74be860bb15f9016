"""Text prompts that join at different passes share each pass, and each ends as it would alone."""

from __future__ import annotations

import torch

from gateway.engine.local.batch import Batch
from gateway.engine.local.encoder_cache import EncoderCache
from gateway.engine.local.joining_rows import JoiningRows
from gateway.engine.local.loader import load_model
from gateway.engine.local.prefix_cache import HeldPrefix
from tests.conftest import DemoDirs
from tests.unit.engine.test_ragged import CONVERSATIONS, counting_forwards, held_prefix, prompt, sequence

COLUMNS = 3


def test_rows_joining_at_different_passes_share_them_and_end_as_each_alone(demo_dirs: DemoDirs) -> None:
    """A cold prompt fed three columns per pass; a warm follow-up and a short cold prompt join after its first
    pass: every pass is one forward over every row still feeding, the newcomers end inside the first prompt's
    passes, and each row leaves with its own first-token logits, KV and mask as one pass alone gives."""
    loaded = load_model(demo_dirs.text_model)
    batch = Batch(loaded, EncoderCache(0, None))
    held = held_prefix(batch, loaded, prompt(loaded, CONVERSATIONS[0], False))
    plan = [(2, False), (0, True), (1, False)]  # a long cold prompt, a warm follow-up, a short cold prompt
    items = [prompt(loaded, CONVERSATIONS[i], follow_up) for i, follow_up in plan]
    alone = [batch.prefill(sequence(loaded), item) for item in items]
    seqs = [sequence(loaded) for _ in items]
    rows, calls, ended = JoiningRows(), counting_forwards(loaded.model), {}
    batch.add_joiners(rows, seqs[:1], items[:1], [None])
    assert batch.feed_joiners(rows, COLUMNS) is None
    helds: list[HeldPrefix | None] = [held, None]
    batch.add_joiners(rows, seqs[1:], items[1:], helds)
    while rows:
        leaving = batch.feed_joiners(rows, COLUMNS)
        for place, seq in enumerate(leaving[0] if leaving else []):
            ended[seqs.index(seq)] = (leaving[1][0][place], leaving[1][1], leaving[1][2], place)
    assert sorted(ended) == [0, 1, 2]
    assert len(calls) == -(-items[0].prompt_tokens // COLUMNS)  # the newcomers cost no pass of their own
    assert seqs[1].cached_tokens == held.length and seqs[2].cached_tokens == 0
    for row, (logits, cache, mask, place) in ended.items():
        tokens = items[row].prompt_tokens
        torch.testing.assert_close(logits, alone[row][0][0], atol=1e-4, rtol=1e-4)
        assert mask[place].tolist() == [0] * (mask.shape[1] - tokens) + [1] * tokens  # contiguous, rightmost
        keys = cache.layers[0].keys[place, :, mask.shape[1] - tokens :]
        torch.testing.assert_close(keys, alone[row][1].layers[0].keys[0], atol=1e-4, rtol=1e-4)
        assert seqs[row].position == tokens  # the next token's position, as alone
