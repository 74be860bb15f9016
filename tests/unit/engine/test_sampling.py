"""Tests for gateway.engine.local.sampling: greedy choice, top-k/top-p filtering, seeds and repetition penalty."""

from __future__ import annotations

import torch

from gateway.engine.contract import SamplingParams
from gateway.engine.local.sampling import apply_repetition_penalty, choose_token, make_generator

CPU = torch.device("cpu")
LOGITS = torch.tensor([0.1, 2.0, -1.0, 1.9, 0.5, 1.95])
NOTHING_SEEN = torch.tensor([], dtype=torch.long)


def sample(params: SamplingParams, n: int, logits: torch.Tensor = LOGITS, seed: int = 0) -> list[int]:
    generator = make_generator(SamplingParams(**{**params.__dict__, "seed": seed}), CPU)
    return [choose_token(logits, params, NOTHING_SEEN, generator) for _ in range(n)]


def test_greedy_picks_the_argmax() -> None:
    """At temperature 0, choose_token returns the index of the largest logit."""
    assert choose_token(LOGITS, SamplingParams(temperature=0.0), NOTHING_SEEN, None) == 1


def test_greedy_needs_no_generator() -> None:
    """A greedy turn gets no RNG at all."""
    assert make_generator(SamplingParams(temperature=0.0, seed=1), CPU) is None


def test_greedy_ignores_top_k_and_top_p() -> None:
    """Greedy choice is the argmax whatever top_k and top_p say."""
    params = SamplingParams(temperature=0.0, top_k=3, top_p=0.5)
    assert choose_token(LOGITS, params, NOTHING_SEEN, None) == 1


def test_top_k_1_equals_greedy_at_temperature_1() -> None:
    """With top_k=1 every sample is the argmax, even at temperature 1."""
    assert set(sample(SamplingParams(temperature=1.0, top_k=1), 200)) == {1}


def test_top_k_limits_choices_to_the_k_best() -> None:
    """With top_k=2 only the two largest logits are ever chosen."""
    assert set(sample(SamplingParams(temperature=2.0, top_k=2), 300)) <= {1, 5}


def test_sampling_without_filters_reaches_other_tokens() -> None:
    """At temperature 1 with no filtering, tokens other than the argmax are sampled too."""
    assert len(set(sample(SamplingParams(temperature=1.0), 300))) > 1


def test_same_seed_repeats_the_same_samples() -> None:
    """Two generators made with the same seed give the same sequence of tokens."""
    params = SamplingParams(temperature=1.0)
    assert sample(params, 50, seed=1234) == sample(params, 50, seed=1234)


def test_different_seeds_give_different_samples() -> None:
    """Generators with different seeds (almost surely) give different sequences."""
    params = SamplingParams(temperature=1.5)
    assert sample(params, 50, seed=1) != sample(params, 50, seed=2)


def test_tiny_top_p_keeps_only_the_top_token() -> None:
    """With a tiny top_p, only the most likely token survives the nucleus filter."""
    assert set(sample(SamplingParams(temperature=1.0, top_p=1e-6), 200)) == {1}


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    """top_p keeps tokens until their probability mass reaches top_p, and no more."""
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert set(sample(SamplingParams(temperature=1.0, top_p=0.75), 400, logits=logits)) == {0, 1}


def test_min_p_keeps_only_tokens_near_the_likeliest() -> None:
    """min_p drops every token less likely than min_p times the likeliest: here all but three near-equal ones."""
    assert set(sample(SamplingParams(temperature=1.0, min_p=0.9), 400)) == {1, 3, 5}


def test_min_p_of_one_equals_greedy() -> None:
    """At min_p 1 only the likeliest token is left, whatever the temperature."""
    assert set(sample(SamplingParams(temperature=2.0, min_p=1.0), 200)) == {1}


def test_repetition_penalty_lowers_a_seen_positive_logit() -> None:
    """A seen token with a positive logit has it divided by the penalty."""
    penalised = apply_repetition_penalty(LOGITS, torch.tensor([1]), 2.0)
    assert penalised[1].item() == 1.0


def test_repetition_penalty_lowers_a_seen_negative_logit() -> None:
    """A seen token with a negative logit has it multiplied by the penalty (so it still drops)."""
    penalised = apply_repetition_penalty(LOGITS, torch.tensor([2]), 2.0)
    assert penalised[2].item() == -2.0


def test_repetition_penalty_leaves_unseen_tokens_alone() -> None:
    """Tokens not in the context keep their logits."""
    penalised = apply_repetition_penalty(LOGITS, torch.tensor([1, 2]), 2.0)
    unseen = [0, 3, 4, 5]
    assert torch.equal(penalised[unseen], LOGITS[unseen])


def test_repetition_penalty_counts_a_repeated_token_once() -> None:
    """A token seen several times is penalised once, not once per occurrence."""
    penalised = apply_repetition_penalty(LOGITS, torch.tensor([1, 1, 1]), 2.0)
    assert penalised[1].item() == 1.0


def test_repetition_penalty_changes_the_greedy_choice() -> None:
    """Penalising the argmax lets the runner-up win a greedy choice."""
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    assert choose_token(LOGITS, params, torch.tensor([1]), None) == 5


def test_penalty_of_one_changes_nothing() -> None:
    """A repetition penalty of 1.0 returns the logits unchanged."""
    assert torch.equal(apply_repetition_penalty(LOGITS, torch.tensor([1, 2]), 1.0), LOGITS)


def test_choose_token_does_not_modify_the_callers_logits() -> None:
    """choose_token leaves the logits tensor it was given unchanged."""
    logits = LOGITS.clone()
    params = SamplingParams(temperature=0.7, top_k=2, top_p=0.9, repetition_penalty=1.3)
    choose_token(logits, params, torch.tensor([1, 3]), make_generator(SamplingParams(temperature=0.7, seed=3), CPU))
    assert torch.equal(logits, LOGITS)
