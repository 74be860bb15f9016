"""Text prompts on held prefixes of different lengths prefill in one forward pass, as each would alone."""

from __future__ import annotations

from typing import Any

import torch

from gateway.engine.contract import ChatMessage, GenerationRequest, SamplingParams
from gateway.engine.local.batch import Batch
from gateway.engine.local.detok import TextStream
from gateway.engine.local.encoder_cache import EncoderCache
from gateway.engine.local.loader import LoadedModel, load_model
from gateway.engine.local.padded import row_states
from gateway.engine.local.prefix_cache import HeldPrefix
from gateway.engine.local.prompt import ModelInputs
from gateway.engine.local.ragged import lay_out, suffix_groups
from gateway.engine.local.sequence import Sequence
from tests.conftest import DemoDirs

CONVERSATIONS = [
    "Tell me about the sky and the sea, please.",
    "one",
    "A longer opening message with several words in it so that it holds more tokens than the others do.",
]


def sequence(loaded: LoadedModel) -> Sequence:
    request = GenerationRequest(messages=[ChatMessage("user", "x")], params=SamplingParams(temperature=0.0))
    return Sequence(request=request, stream=TextStream(loaded.tokenizer, ()))


def prompt(loaded: LoadedModel, opening: str, follow_up: bool) -> ModelInputs:
    messages = [ChatMessage("user", opening)]
    if follow_up:
        messages += [ChatMessage("assistant", "sure, the red house"), ChatMessage("user", "and the small cat?")]
    return loaded.prompt.build(messages)


def held_prefix(batch: Batch, loaded: LoadedModel, item: ModelInputs) -> HeldPrefix:
    """A first turn's prompt, prefilled alone and held as a finished turn's KV is."""
    _, cache, mask = batch.prefill(sequence(loaded), item)
    return HeldPrefix(length=item.prompt_tokens, layers=row_states(cache, mask, 0))


def counting_forwards(model: Any) -> list[int]:
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_warm_and_cold_text_prompts_prefill_in_one_forward_pass_as_each_alone(demo_dirs: DemoDirs) -> None:
    """Two follow-ups on held prefixes of different lengths and a cold prompt: one forward pass, whose
    first-token logits equal each prompt's own full prefill, reusing held tokens beyond the longest new part."""
    loaded = load_model(demo_dirs.text_model)
    batch = Batch(loaded, EncoderCache(0, None))
    firsts = [prompt(loaded, text, False) for text in CONVERSATIONS[:2]]
    helds: list[HeldPrefix | None] = [held_prefix(batch, loaded, item) for item in firsts]
    items = [prompt(loaded, text, True) for text in CONVERSATIONS[:2]] + [prompt(loaded, CONVERSATIONS[2], False)]
    alone = [batch.prefill(sequence(loaded), item)[0][0] for item in items]
    calls = counting_forwards(loaded.model)
    seqs = [sequence(loaded) for _ in items]
    prefilled = batch.feed_rows(batch.start_rows(seqs, items, [*helds, None]))
    assert prefilled is not None and len(calls) == 1
    logits, cache, mask = prefilled
    for row, expected in enumerate(alone):
        torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)
        assert seqs[row].position == items[row].prompt_tokens  # the next token's position, as alone
    assert seqs[0].cached_tokens > 0 and seqs[2].cached_tokens == 0
    assert all(seq.cached_tokens <= (held.length if held else 0) for seq, held in zip(seqs, [*helds, None]))
    assert mask.sum(dim=1).tolist() == [item.prompt_tokens for item in items]
    assert cache.layers[0].keys.shape[2] == mask.shape[1]


def test_a_rows_real_columns_are_contiguous_and_rightmost() -> None:
    """Rows fed fewer new tokens than the longest feed their last held ones again: no hole in any row."""
    prompts = [torch.arange(10), torch.arange(4), torch.arange(7)]
    layout = lay_out(prompts, [8, 0, 6], lambda ids: (torch.arange(ids.shape[1]).view(1, -1), 0), torch.device("cpu"))
    assert layout.input_ids.shape == (3, 4)  # the cold row's four tokens are the longest new part
    assert layout.cached == [6, 0, 3]
    for row, ids in enumerate(prompts):
        real = layout.mask[row].nonzero().view(-1).tolist()
        assert real == list(range(layout.mask.shape[1] - len(ids), layout.mask.shape[1]))
        assert layout.positions[row, -1].item() == len(ids) - 1


def test_groups_keep_short_continuations_apart_from_long_cold_prompts() -> None:
    """One-token continuations group together; a 200-token cold prompt does not make them pay its length."""
    assert suffix_groups([1, 3, 200, 2, 150]) == [[0, 3, 1], [4, 2]]
