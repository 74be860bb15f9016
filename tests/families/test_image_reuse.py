"""Prompts with images on held KV, per family: replies and first-token logits equal a full prefill's, held
images are not prefilled again, a different picture is not reused, and the families that cannot reuse
images prefill them in full."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from gateway.engine.contract import ChatMessage, GenerationResult, SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.image_prefix import content_key
from gateway.engine.local.loader import load_model
from gateway.engine.local.prompt import PromptBuilder
from tests.families.builders import SPECS, cached_family
from tests.unit.engine.test_prefix_cache import GREEDY, generate as one_turn, picture

REUSING = [
    "aya_vision",
    "gemma3",
    "glm4v",
    "idefics3",
    "internvl",
    "llava",
    "llava_next",
    "llava_onevision",
    "mistral3",
    "qwen2_5_vl",
    "qwen2_vl",
    "qwen3_vl",
    "smolvlm",
]
NOT_REUSING = ["mllama", "paligemma"]  # cross-attention; prefix-LM attention over the whole prompt
# The pictures of each user turn: one; none (images in the history); two new ones; one more new one
# after the held ones; none.
PLAN: list[tuple[int, ...]] = [(1,), (), (2, 3), (4,), ()]
# Float32 on the CPU: a prefill on held KV differs from a full one by rounding, ~2e-7 on these models; Gemma 3's
# image mask given from the suffix's start instead of the prompt's moves its logits by ~2e-5.
LOGITS_ATOL = 2e-6


@dataclass
class Served:
    """One family's model on two engines, with held KV reused (`warm`) and without (`cold`)."""

    warm: LocalEngine
    cold: LocalEngine
    prompt: PromptBuilder  # the warm engine's prompts, built on the test's thread
    logits: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {"warm": [], "cold": []})


# Each engine's recorded prefills (`record_prefills`), by id, for `generate` to keep one per turn.
RECORDED: dict[int, list[torch.Tensor]] = {}


def record_prefills(engine: LocalEngine, into: list[torch.Tensor]) -> None:
    """Keep the last-position logits of every prefill pass (`generate` keeps a turn's last)."""
    RECORDED[id(engine)] = into

    def hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        fed = kwargs.get("input_ids")  # image prompts that join the rows are fed as embeddings
        if (fed if fed is not None else kwargs["inputs_embeds"]).shape[1] > 1:  # a decode step feeds one token
            into.append(output.logits[0, -1].float().clone())

    engine.loaded.model.register_forward_hook(hook, with_kwargs=True)


def serve(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    spec = SPECS[name]
    template = None
    if not spec.ships_template:  # served as `gateway serve --chat-template FILE`
        template = tmp_path_factory.mktemp("template") / "chat_template.jinja"
        template.write_text(spec.template)
    path = cached_family(name)
    warm, cold = (  # the cold engine holds nothing: no KV, no vision-encoder outputs
        LocalEngine(
            load_model(path, chat_template=str(template) if template else None),
            max_batch=4,
            kv_cache_bytes=budget,
            encoder_cache_bytes=encoder,
        )
        for budget, encoder in ((None, 128 << 20), (0, 0))
    )
    served = Served(warm, cold, warm.loaded.prompt.for_another_thread())
    for engine, key in ((warm, "warm"), (cold, "cold")):
        engine.start()  # the start-up probe runs before the hook: it is no turn
        record_prefills(engine, served.logits[key])
    yield served
    warm.stop()
    cold.stop()


@pytest.fixture(scope="module", params=REUSING)
def reusing(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=NOT_REUSING)
def not_reusing(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(request.param, tmp_path_factory)


async def generate(engine: LocalEngine, messages: list[ChatMessage], params: SamplingParams = GREEDY) -> GenerationResult:
    """One turn; of the prefill passes it ran, only the last one's logits stay recorded: a prompt longer than a chunk
    is fed a chunk per pass, and its last gives the first token. For turns run one at a time (the logits compared)."""
    recorded = RECORDED[id(engine)]
    start = len(recorded)
    result = await one_turn(engine, messages, params)
    del recorded[start:-1]
    return result


async def converse(engine: LocalEngine, plan: list[tuple[int, ...]]) -> tuple[list[GenerationResult], list[list[ChatMessage]]]:
    """Greedy turns with the planned pictures; each turn's result and the messages it was prompted with."""
    history = [ChatMessage("system", "You are terse.")]
    results, prompts = [], []
    for turn, pictures in enumerate(plan):
        history.append(ChatMessage("user", f"what about picture {turn}", tuple(picture(n) for n in pictures)))
        prompts.append(list(history))
        result = await generate(engine, history)
        assert result.error is None, result.error
        history.append(ChatMessage("assistant", result.text))
        results.append(result)
    return results, prompts


def assert_same_logits(served: Served) -> None:
    """The prefills recorded since the last check gave the same first-token logits warm and cold."""
    warm, cold = served.logits["warm"], served.logits["cold"]
    assert len(warm) == len(cold) > 0
    for turn, (w, c) in enumerate(zip(warm, cold)):
        assert torch.allclose(w, c, rtol=0, atol=LOGITS_ATOL), (turn, float((w - c).abs().max()))
    warm.clear()
    cold.clear()


async def test_turns_with_images_match_a_full_prefill_and_skip_the_held_images(reusing: Served) -> None:
    """Over five turns (one image, a text turn, two new images, one more new image, a text turn) the
    greedy replies and each turn's first-token logits equal the full prefill's, and each warm turn holds
    every image of the turn before: only new images are prefilled (a family that processes an image
    differently once the prompt has more images, LLaVA-OneVision, holds the text before it then)."""
    reusing.logits["warm"].clear()
    reusing.logits["cold"].clear()
    warm, prompts = await converse(reusing.warm, PLAN)
    cold, _ = await converse(reusing.cold, PLAN)
    assert [r.token_ids for r in warm] == [r.token_ids for r in cold]
    assert_same_logits(reusing)
    assert all(r.cached_tokens == 0 for r in cold)
    family = reusing.prompt.family
    for turn in range(1, len(PLAN)):
        before = reusing.prompt.build(prompts[turn - 1])
        assert before.layout is not None
        images = [len(reusing.prompt.build(prompts[t]).images) for t in (turn - 1, turn)]
        if family.variant(images[0]) == family.variant(images[1]):
            assert warm[turn].cached_tokens >= before.layout.spans[-1][1], turn
        else:
            assert 0 < warm[turn].cached_tokens <= before.layout.spans[0][0], turn


async def test_a_different_picture_of_the_same_size_is_not_reused(reusing: Served) -> None:
    """Two pictures of one size give the same tokens; held KV of one stops where the other's image starts."""
    opening = [ChatMessage("user", "describe", (picture(5),))]
    other = [ChatMessage("user", "describe", (picture(7),)), ChatMessage("assistant", "x"), ChatMessage("user", "and?")]
    inputs = reusing.prompt.build(other)
    assert torch.equal(reusing.prompt.build(opening).input_ids, reusing.prompt.build(other[:1]).input_ids)
    assert inputs.layout is not None
    await generate(reusing.warm, opening)
    reusing.logits["warm"].clear()
    reusing.logits["cold"].clear()
    hot, reference = await generate(reusing.warm, other), await generate(reusing.cold, other)
    assert hot.token_ids == reference.token_ids
    assert_same_logits(reusing)
    assert 0 < hot.cached_tokens <= inputs.layout.spans[0][0]


async def test_warm_and_cold_image_turns_decoded_together_match_each_alone(reusing: Served) -> None:
    """Continuations on held images (one with a new image, one without) and fresh image prompts, decoding
    in one batch, give what each gives alone on a full prefill."""
    continued = []
    for n in range(2):
        history = [ChatMessage("user", f"picture {n} here", (picture(10 + n),))]
        reply = await generate(reusing.warm, history)
        again = (picture(20 + n),) if n else ()
        continued.append([*history, ChatMessage("assistant", reply.text), ChatMessage("user", "and this?", again)])
    fresh = [[ChatMessage("user", f"new picture {n}", (picture(30 + n),))] for n in range(2)]
    prompts = [continued[0], fresh[0], continued[1], fresh[1]]
    params = [SamplingParams(temperature=0, max_tokens=6 + 2 * i, ignore_eos=True) for i in range(len(prompts))]
    together = await asyncio.gather(*(generate(reusing.warm, m, p) for m, p in zip(prompts, params)))
    alone = [await generate(reusing.cold, m, p) for m, p in zip(prompts, params)]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert together[0].cached_tokens > 0 and together[2].cached_tokens > 0


async def test_images_seen_before_skip_the_vision_tower_without_held_kv(reusing: Served) -> None:
    """A prompt that shares no held KV but whose images were all encoded before (as a text turn after its
    history's KV was trimmed or evicted) takes their encoder outputs from the cache: the same replies and
    first-token logits as encoding them again (Qwen3-VL's per-layer deepstack features included). With one
    new image among them, only that one goes through the vision tower."""
    await generate(reusing.warm, [ChatMessage("user", "first look", (picture(40), picture(41)))])
    reusing.logits["warm"].clear()
    reusing.logits["cold"].clear()
    again = [ChatMessage("system", "Another opening."), ChatMessage("user", "these again", (picture(40), picture(41)))]
    hits = reusing.warm.encoder_cache.hits
    hot, reference = await generate(reusing.warm, again), await generate(reusing.cold, again)
    assert hot.token_ids == reference.token_ids
    assert_same_logits(reusing)
    assert reusing.warm.encoder_cache.hits == hits + 1 and reusing.cold.encoder_cache.hits == 0
    mixed = [ChatMessage("system", "A third opening."), ChatMessage("user", "and", (picture(40), picture(42)))]
    encoded = reusing.warm.encoder_cache.encoded
    hot, reference = await generate(reusing.warm, mixed), await generate(reusing.cold, mixed)
    assert hot.token_ids == reference.token_ids and reusing.warm.encoder_cache.hits == hits + 2
    assert reusing.warm.encoder_cache.encoded == encoded + 1  # the new picture alone went through the tower
    assert_same_logits(reusing)
    assert reusing.warm.encoder_cache.bytes <= reusing.warm.encoder_cache.max_bytes


async def test_families_that_cannot_reuse_images_prefill_them_in_full(not_reusing: Served) -> None:
    """Images outside the held self-attention KV (cross-attention) or a prompt attended as one block
    (prefix-LM): no key, so every turn with an image in its prompt is prefilled in full, and matches."""
    warm, prompts = await converse(not_reusing.warm, PLAN[:3])
    cold, _ = await converse(not_reusing.cold, PLAN[:3])
    assert [r.token_ids for r in warm] == [r.token_ids for r in cold]
    assert all(content_key(not_reusing.prompt.build(p)) is None for p in prompts)
    assert all(r.cached_tokens == 0 for r in warm)
