"""Held KV prefixes: longest exact match, LRU within a byte budget, and replies identical with reuse on and off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import torch

from gateway.core.session import Session, UserTurn
from gateway.engine.contract import ChatImage, ChatMessage, GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from gateway.engine.local.prefix_cache import (
    LayerStates,
    PrefixCache,
    Spill,
    default_budget,
    pin_to_host,
    spill_for,
    states_bytes,
)
from tests.conftest import DemoDirs, chat_image, wait_until
from tests.unit.engine.test_engine import Collector

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def states(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(1, 2, tokens, 4), torch.zeros(1, 2, tokens, 4)) for _ in range(2)]


def test_a_warm_ups_entry_is_used_up_by_its_own_sessions_hit_only() -> None:
    """A warm-up's entry (`once`) stays when another session's prompt shares only its opening (a system prompt),
    and goes at its own session's first hit."""
    cache = PrefixCache(1 << 20)
    cache.store(None, (1, 2, 3, 4, 5), states(5), once=True, owner="s")
    held = cache.lookup(None, (1, 2, 9, 9), "other")
    assert held is not None and held.length == 2 and len(cache) == 1
    held = cache.lookup(None, (1, 2, 3, 4, 7, 8), "s")
    assert held is not None and held.length == 4 and len(cache) == 0


def test_lookup_finds_the_longest_exact_prefix_within_an_adapter() -> None:
    """The longest common prefix wins, at least one token is left to prefill, adapters never mix."""
    cache = PrefixCache(1 << 20)
    cache.store(None, (1, 2, 3), states(3))
    cache.store(None, (1, 2, 9, 9, 9), states(5))
    cache.store("tuned", (1, 2, 3, 4, 5), states(5))
    held = cache.lookup(None, (1, 2, 3, 4))
    assert held is not None and held.length == 3
    full = cache.lookup(None, (1, 2, 3))
    assert full is not None and full.length == 2
    assert cache.lookup(None, (7, 1, 2)) is None
    tuned = cache.lookup("tuned", (1, 2, 3, 4, 5, 6))
    assert tuned is not None and tuned.length == 5


def test_an_extension_replaces_the_prefix_it_extends() -> None:
    """Storing a longer sequence drops held entries that are its prefixes."""
    cache = PrefixCache(1 << 20)
    cache.store(None, (1, 2), states(2))
    cache.store(None, (1, 2, 3, 4), states(4))
    assert len(cache) == 1 and cache.bytes == states_bytes(states(4))


def test_held_bytes_never_exceed_the_budget_and_the_least_recent_go_first() -> None:
    """Over budget, the least recently used entry is evicted; an entry larger than the budget is not held."""
    one = states_bytes(states(4))
    cache = PrefixCache(3 * one)
    for first in range(3):
        cache.store(None, (first, 1, 2, 3), states(4))
    assert cache.lookup(None, (0, 1, 2, 3, 4)) is not None  # 0 is now the most recent
    cache.store(None, (5, 1, 2, 3), states(4))
    assert cache.bytes <= cache.max_bytes and len(cache) == 3
    assert cache.lookup(None, (1, 1, 2, 3, 4)) is None  # evicted
    assert cache.lookup(None, (0, 1, 2, 3, 4)) is not None
    cache.store(None, (8,) * 20, states(20))
    assert cache.bytes <= cache.max_bytes and cache.lookup(None, (8,) * 21) is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_unused_for_idle_s_expire() -> None:
    """An entry goes once unused for `idle_s`; a lookup counts as use; the thread knows when to wake."""
    clock = Clock()
    cache = PrefixCache(1 << 20, idle_s=10, clock=clock)
    cache.store(None, (1, 2, 3), states(3))
    clock.now = 5
    cache.store(None, (4, 5, 6), states(3))
    clock.now = 12
    cache.expire()
    assert cache.lookup(None, (1, 2, 3, 4)) is None and len(cache) == 1 and cache.seconds_to_expiry() == 3
    clock.now = 14
    assert cache.lookup(None, (4, 5, 6, 7)) is not None
    clock.now = 20
    cache.expire()
    assert len(cache) == 1 and cache.seconds_to_expiry() == 4
    clock.now = 24
    cache.expire()
    assert len(cache) == 0 and cache.bytes == 0 and cache.seconds_to_expiry() is None
    assert PrefixCache(1 << 20).seconds_to_expiry() is None


def test_evicted_entries_spill_to_host_within_its_own_budget_then_go() -> None:
    """With a spill target (a GPU), the device's least recent entries move to the host tier, whose
    oldest go in turn; a spilled entry is still found, and an extension replaces it."""
    one = states_bytes(states(4))
    spilled: list[int] = []

    def spill(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        spilled.append(layers[0][0].shape[2])
        return [(k.clone(), v.clone()) for k, v in layers]

    cache = PrefixCache(2 * one, spill_bytes=2 * one, spill=spill)
    for first in range(5):
        cache.store(None, (first, 1, 2, 3), states(4))
        assert cache.bytes <= cache.max_bytes and cache.spilled_bytes <= cache.spill_bytes
    assert len(spilled) == 3 and len(cache) == 4 and cache.spilled_bytes == 2 * one
    assert cache.lookup(None, (0, 1, 2, 3, 4)) is None  # spilled, then dropped
    held = cache.lookup(None, (1, 1, 2, 3, 4))
    assert held is not None and held.length == 4
    cache.store(None, (1, 1, 2, 3, 4, 5), states(6))
    assert cache.bytes <= cache.max_bytes and cache.spilled_bytes <= cache.spill_bytes and len(cache) == 3
    longer = cache.lookup(None, (1, 1, 2, 3, 4, 5, 6))
    assert longer is not None and longer.length == 6 and longer.layers[0][0].shape[2] == 6


def test_only_a_gpu_spills() -> None:
    """On the CPU held KV is in host memory already: eviction drops it; on CUDA it is pinned first."""
    assert spill_for(torch.device("cuda")) is pin_to_host
    assert spill_for(torch.device("cpu")) is None
    cache = PrefixCache(states_bytes(states(4)), spill_bytes=1 << 20, spill=spill_for(torch.device("cpu")))
    cache.store(None, (1, 2, 3, 4), states(4))
    cache.store(None, (5, 6, 7, 8), states(4))
    assert len(cache) == 1 and cache.spill_bytes == 0 and cache.spilled_bytes == 0


def test_the_default_budget_is_a_share_of_free_gpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, the budget is a quarter of the GPU's free memory; on the CPU, 256 MiB."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 << 30, 80 << 30))
    assert default_budget(torch.device("cuda")) == 10 << 30
    assert default_budget(torch.device("cpu")) == 256 << 20


async def test_the_idle_generation_thread_lets_held_kv_expire(demo_dirs: DemoDirs) -> None:
    """With no turns at all, the generation thread still wakes to drop what has been idle too long."""
    # 2 s idle: the KV is surely still held when the turn's result is read, however loaded the machine
    engine = LocalEngine(load_model(demo_dirs.model), kv_cache_idle_s=2.0)
    engine.start()
    try:
        await generate(engine, [ChatMessage("user", "hold this")])
        assert len(engine.prefix_cache) == 1
        await wait_until(lambda: engine.load().kv_cache_bytes == 0)
        assert len(engine.prefix_cache) == 0
    finally:
        await asyncio.to_thread(engine.stop)


@pytest.fixture
async def engines(demo_dirs: DemoDirs) -> AsyncIterator[tuple[LocalEngine, LocalEngine]]:
    warm = LocalEngine(load_model(demo_dirs.model), max_batch=8)
    cold = LocalEngine(load_model(demo_dirs.model), max_batch=8, kv_cache_bytes=0)
    warm.start()
    cold.start()
    yield warm, cold
    await asyncio.to_thread(warm.stop)
    await asyncio.to_thread(cold.stop)


async def generate(engine: LocalEngine, messages: list[ChatMessage], params: SamplingParams = GREEDY) -> GenerationResult:
    sink = Collector()
    engine.submit(GenerationRequest(messages=messages, params=params), sink)
    return await asyncio.wait_for(sink.done, 60)


async def converse(engine: LocalEngine, turns: int, opening: str) -> list[GenerationResult]:
    history = [ChatMessage("system", "You are terse.")]
    results = []
    for turn in range(turns):
        history.append(ChatMessage("user", f"{opening} question number {turn} about the sky"))
        result = await generate(engine, history)
        history.append(ChatMessage("assistant", result.text))
        results.append(result)
    return results


async def test_ten_turns_are_identical_with_reuse_on_and_off(engines: tuple[LocalEngine, LocalEngine]) -> None:
    """Greedy replies over a 10-turn conversation match token for token; later turns reuse held KV."""
    warm, cold = engines
    with_reuse = await converse(warm, 10, "a")
    without = await converse(cold, 10, "a")
    assert [r.token_ids for r in with_reuse] == [r.token_ids for r in without]
    assert with_reuse[0].cached_tokens == 0 and all(r.cached_tokens > 0 for r in with_reuse[1:])
    assert all(r.cached_tokens == 0 for r in without)
    assert warm.prefix_cache.bytes <= warm.prefix_cache.max_bytes


async def test_a_batch_mixing_warm_and_cold_turns_matches_cold(engines: tuple[LocalEngine, LocalEngine]) -> None:
    """Warm continuations and cold prompts admitted together each get their solo tokens."""
    warm, cold = engines
    histories = []
    for opening in ("first", "second", "third"):
        history = [ChatMessage("user", f"{opening} thing to say")]
        reply = await generate(warm, history)
        histories.append([*history, ChatMessage("assistant", reply.text), ChatMessage("user", "and then?")])
    fresh = [[ChatMessage("user", f"unrelated prompt {n} with words")] for n in range(3)]
    prompts = [p for pair in zip(histories, fresh) for p in pair]
    params = [SamplingParams(temperature=0, max_tokens=8 + 3 * i, ignore_eos=True) for i in range(len(prompts))]
    together = await asyncio.gather(*(generate(warm, m, p) for m, p in zip(prompts, params)))
    solo = [await generate(cold, m, p) for m, p in zip(prompts, params)]
    assert [r.token_ids for r in together] == [r.token_ids for r in solo]
    assert all(w.cached_tokens > c.cached_tokens for w, c in zip(together[0::2], together[1::2]))


def picture(n: int) -> ChatImage:
    """A distinct picture per n, in one of two sizes (the same token count, different grids)."""
    return chat_image((40 * n % 256, 90, 200 - 17 * n % 200), (112, 56) if n % 2 else (56, 112))


class Watched(PrefixCache):
    """A prefix cache that remembers the most it ever held in each tier."""

    peak = 0
    peak_spilled = 0

    def store(
        self, adapter: str | None, token_ids: tuple[int, ...], layers: LayerStates, once: bool = False, owner: str | None = None
    ) -> None:
        super().store(adapter, token_ids, layers, once, owner)
        self.peak = max(self.peak, self.bytes)
        self.peak_spilled = max(self.peak_spilled, self.spilled_bytes)


async def lockstep(engines: tuple[LocalEngine, LocalEngine], messages: list[ChatMessage]) -> GenerationResult:
    """One turn on both engines: the replies must match token for token."""
    warm, cold = engines
    hot, reference = await generate(warm, messages), await generate(cold, messages)
    assert hot.token_ids == reference.token_ids
    return hot


LONG = " ".join(["the red house shows a small cat"] * 4)


def pinned_on_cpu(layers: LayerStates) -> LayerStates:
    return [(k.clone(), v.clone()) for k, v in layers]


@pytest.mark.parametrize("spill", [None, pinned_on_cpu], ids=["drop", "spill"])
async def test_after_an_eviction_replies_match_and_held_bytes_stay_in_budget(
    engines: tuple[LocalEngine, LocalEngine], spill: Spill | None
) -> None:
    """A second conversation evicts the first from a small budget: the first's next turn prefills in
    full (or, spilled, from host memory), the turn after reuses again; held bytes never pass the budget."""
    warm, _ = engines
    cache = warm.prefix_cache = Watched(1 << 30, spill_bytes=1 << 30, spill=spill)
    first: list[ChatMessage] = [ChatMessage("user", "first conversation", (picture(1),))]
    second: list[ChatMessage] = [ChatMessage("user", "another one entirely " + LONG)]
    for turn in range(3):
        first += [ChatMessage("assistant", (await lockstep(engines, first)).text), ChatMessage("user", f"more {turn}")]
    cache.max_bytes = int(cache.bytes * 1.6)
    for turn in range(3):
        second += [ChatMessage("assistant", (await lockstep(engines, second)).text), ChatMessage("user", f"else {turn} " + LONG)]
    back = await lockstep(engines, first)
    first += [ChatMessage("assistant", back.text), ChatMessage("user", "and finally")]
    again = await lockstep(engines, first)
    assert (back.cached_tokens > 30) == (spill is not None) and again.cached_tokens >= back.prompt_tokens
    assert 0 < cache.peak <= cache.max_bytes and cache.peak_spilled <= cache.spill_bytes
    assert (cache.peak_spilled > 0) == (spill is not None)


async def test_after_trimming_replies_match_and_the_next_prefill_is_full(engines: tuple[LocalEngine, LocalEngine]) -> None:
    """A session trimmed to its context window: a turn that drops old exchanges reuses only the shared
    opening; replies match with reuse on and off throughout."""
    warm, _ = engines
    session = Session(max_history_turns=100, system="You are terse.")
    cached = []
    for turn in range(12):
        images = (picture(turn),) if turn % 4 == 0 else ()
        user = UserTurn(f"t{turn}", f"turn {turn} asks about the sky and the sea", images)
        plan = await session.plan(user, 10, 150, warm.count_prompt_tokens)
        session.drop_oldest(plan.dropped_turns)
        result = await lockstep(engines, plan.messages)
        session.record(user, result.text, False, session.epoch)
        cached.append((plan.dropped_turns, result.cached_tokens, result.prompt_tokens))
    assert any(dropped for dropped, _, _ in cached)
    assert all(hit < 12 for dropped, hit, _ in cached if dropped)
    assert all(hit > 30 for dropped, hit, _ in cached[1:] if not dropped)


async def test_trim_headroom_keeps_a_session_at_the_window_edge_warm(engines: tuple[LocalEngine, LocalEngine]) -> None:
    """Without headroom, a session whose history fills the window drops an exchange, and prefills in
    full, on nearly every turn; with it, trims are rare and the turns between them reuse held KV."""
    warm, _ = engines
    runs = {}
    for headroom in (0.0, 0.25):
        session = Session(max_history_turns=100, system="You are terse.")
        trims = hits = 0
        for turn in range(16):
            user = UserTurn(f"t{turn}", f"turn {turn} asks about the sky and the sea")
            plan = await session.plan(user, 10, 150, warm.count_prompt_tokens, headroom=headroom)
            session.drop_oldest(plan.dropped_turns)
            result = await lockstep(engines, plan.messages)
            session.record(user, result.text, False, session.epoch)
            assert plan.prompt_tokens + 10 <= 150
            trims += plan.dropped_turns > 0
            hits += not plan.dropped_turns and result.cached_tokens > 30
        runs[headroom] = (trims, hits)
    (trims_without, hits_without), (trims_with, hits_with) = runs[0.0], runs[0.25]
    assert trims_without >= 8 and trims_with <= trims_without // 2, runs
    assert hits_with > hits_without, runs


def test_a_warm_ups_entry_goes_at_its_first_hit() -> None:
    """An entry stored `once` (a warm-up's) serves one lookup, then holds nothing: its question had it, and the
    question's own entry never extends it (it diverges where the question's text begins)."""
    cache = PrefixCache(1 << 20)
    cache.store(None, (1, 2, 3, 4), states(4), once=True)
    held = cache.lookup(None, (1, 2, 3, 4, 8, 9))
    assert held is not None and held.length == 4 and len(cache) == 0 and cache.bytes == 0
    assert cache.lookup(None, (1, 2, 3, 4, 8, 9)) is None
