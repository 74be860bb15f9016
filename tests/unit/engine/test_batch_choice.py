"""A decode step's token choice: the whole batch's greedy rows from one argmax, equal to each row's own choice."""

from __future__ import annotations

import torch

from gateway.engine.contract import ChatMessage, GenerationRequest, SamplingParams
from gateway.engine.local.batch import Batch
from gateway.engine.local.detok import TextStream
from gateway.engine.local.encoder_cache import EncoderCache
from gateway.engine.local.loader import LoadedModel, load_model
from gateway.engine.local.sampling import make_generator
from gateway.engine.local.sequence import Sequence
from tests.conftest import DemoDirs

PARAMS = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.0, repetition_penalty=1.5),
    SamplingParams(temperature=1.0, seed=7),
    SamplingParams(temperature=0.0),
]


def sequences(loaded: LoadedModel) -> list[Sequence]:
    rows = []
    for params in PARAMS:
        seq = Sequence(GenerationRequest([ChatMessage("user", "x")], params), TextStream(loaded.tokenizer, ()))
        seq.generator = make_generator(params, loaded.device)
        seq.seen = torch.tensor([3, 5, 9]) if params.repetition_penalty != 1.0 else None
        rows.append(seq)
    return rows


def test_choosing_for_the_whole_batch_equals_each_rows_own_choice(demo_dirs: DemoDirs) -> None:
    """Greedy rows (ties included: the first maximum wins), a row with a repetition penalty and a seeded
    sampled row get the tokens `choose` gives each alone, and each row records its token."""
    loaded = load_model(demo_dirs.text_model)
    torch.manual_seed(0)
    logits = torch.randn(len(PARAMS), 64)
    logits[3, 10] = logits[3, 20] = logits[3].max() + 1  # a tie: both argmaxes pick 10
    logits[1, 5] = logits[1].max() + 0.1  # the penalty moves row 1 off a token it has seen
    together, alone = Batch(loaded, EncoderCache(0, None)), Batch(loaded, EncoderCache(0, None))
    together.sequences, alone.sequences = sequences(loaded), sequences(loaded)
    tokens = together.choose_all(logits)
    assert tokens == [alone.choose(seq, logits[i]) for i, seq in enumerate(alone.sequences)]
    assert tokens[3] == 10 and tokens[1] != 5
    assert [seq.token_ids for seq in together.sequences] == [[token] for token in tokens]
