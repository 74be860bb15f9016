"""Image tokens keyed by content, the extras of a prompt's suffix after a held prefix, and prompts with
images reusing held KV on the demo model (GLM-4V, 3-D rotary positions)."""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from gateway.engine.contract import ChatMessage, GenerationResult, SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.image_layout import ImageLayout, Stacked
from gateway.engine.local.image_prefix import content_key, suffix_extras, whole_pictures
from gateway.engine.local.prompt import ModelInputs
from tests.unit.engine.test_prefix_cache import (
    engines as engines,  # the fixture: the same engine with reuse on and off
    generate,
    picture,
)

IMAGE = 99


def grid_prompt(images: tuple[str, ...]) -> ModelInputs:
    """Text, a 2-token image (grid 1x2x4: 8 pixel rows), text, a 1-token image (1x2x2: 4 rows), text."""
    ids = torch.tensor([[1, 2, IMAGE, IMAGE, 3, 4, IMAGE, 5]])
    types = (ids == IMAGE).long()
    pixels = torch.arange(12).view(12, 1).float()
    grid = torch.tensor([[1, 2, 4], [1, 2, 2]])
    stacked = {"pixel_values": Stacked(0, (8, 4)), "image_grid_thw": Stacked(0, (1, 1))}
    layout = ImageLayout(((2, 4), (6, 7)), stacked, ("mm_token_type_ids",))
    return ModelInputs(ids, {"pixel_values": pixels, "image_grid_thw": grid, "mm_token_type_ids": types}, images, layout)


def test_image_tokens_are_keyed_by_the_picture() -> None:
    """The same placeholders with a different picture give a different key from the image on."""
    one, other = content_key(grid_prompt(("a" * 64, "b" * 64))), content_key(grid_prompt(("c" * 64, "b" * 64)))
    assert one is not None and other is not None
    assert one[:2] == other[:2] == (1, 2) and one[2] != other[2] and one[2] < 0 and one[4:6] == (3, 4)


def test_a_held_part_cut_inside_a_picture_stops_before_it() -> None:
    """A warm-up that gave way part-way is held up to the last picture it holds whole: a cut inside a picture's
    span goes back to the span's start; a cut between text tokens, or at a span's end, stays."""
    key = content_key(grid_prompt(("a" * 64, "b" * 64)))
    assert key is not None
    assert [whole_pictures(key, n) for n in range(len(key) + 1)] == [0, 1, 2, 2, 4, 5, 6, 7, 8]


def test_text_prompts_key_as_their_token_ids_and_prompts_without_a_layout_are_not_keyed() -> None:
    """No images: the key is the token ids; images with no layout (a family that cannot reuse them): no key."""
    assert content_key(ModelInputs(torch.tensor([[5, 6]]), {})) == (5, 6)
    odd = grid_prompt(("a" * 64, "b" * 64))
    odd.layout = None
    assert content_key(odd) is None


def test_the_same_picture_processed_another_way_keys_differently() -> None:
    """A picture's key covers how it was processed: another variant gives another key from the image on."""
    one, other = content_key(grid_prompt(("a" * 64, "b" * 64))), content_key(grid_prompt(("a" * 64 + ":x", "b" * 64)))
    assert one is not None and other is not None and one[:2] == other[:2] and one[2] != other[2]


def test_the_suffix_carries_only_the_images_after_the_held_part() -> None:
    """Held through the first image: the second image's pixel rows, grid and token types remain."""
    inputs = grid_prompt(("a" * 64, "b" * 64))
    suffix = suffix_extras(inputs, 4)
    assert suffix["pixel_values"].view(-1).tolist() == [8, 9, 10, 11]
    assert suffix["image_grid_thw"].tolist() == [[1, 2, 2]]
    assert suffix["mm_token_type_ids"].tolist() == [[0, 0, 1, 0]]
    assert suffix_extras(inputs, 7) == {} and suffix_extras(inputs, 1)["pixel_values"].shape[0] == 12


def test_tensors_read_per_prompt_or_by_absolute_position_stay_whole() -> None:
    """A tensor neither stacked by image nor sliced per token (a prompt's image count, Gemma 3's token
    types) reaches the suffix whole."""
    inputs = grid_prompt(("a" * 64, "b" * 64))
    inputs.extras["batch_num_images"] = torch.tensor([2])
    inputs.extras["token_type_ids"] = inputs.extras["mm_token_type_ids"].clone()
    suffix = suffix_extras(inputs, 4)
    assert suffix["batch_num_images"].tolist() == [2] and suffix["token_type_ids"].shape == (1, 8)


async def converse_with_images(engine: LocalEngine, turns: int) -> list[GenerationResult]:
    history = [ChatMessage("system", "You are terse.")]
    results = []
    for turn in range(turns):
        images = (picture(turn),) if turn % 3 == 0 else (picture(turn), picture(turn + 1)) if turn % 3 == 1 else ()
        history.append(ChatMessage("user", f"what about picture {turn}", images))
        result = await generate(engine, history)
        history.append(ChatMessage("assistant", result.text))
        results.append(result)
    return results


async def test_ten_turns_with_images_are_identical_with_reuse_on_and_off(engines: tuple[LocalEngine, LocalEngine]) -> None:
    """Held KV with images in it is reused (3-D positions continue the held offset) and greedy replies
    match token for token; only the new turn's images go through the vision tower."""
    warm, cold = engines
    model = warm.loaded.model.model
    encode, encoded = model.get_image_features, []

    def counting(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, **kwargs: Any) -> Any:
        encoded.append(image_grid_thw.shape[0])
        return encode(pixel_values, image_grid_thw, **kwargs)

    model.get_image_features = counting
    with_reuse = await converse_with_images(warm, 10)
    without = await converse_with_images(cold, 10)
    assert [r.token_ids for r in with_reuse] == [r.token_ids for r in without]
    assert all(r.cached_tokens > 0 for r in with_reuse[1:]) and all(r.cached_tokens == 0 for r in without)
    assert sum(encoded) == 10  # each picture once, on the turn it was sent


async def test_a_different_picture_under_the_same_tokens_is_not_reused(engines: tuple[LocalEngine, LocalEngine]) -> None:
    """Two pictures with the same placeholder tokens: the held prefix stops before the image."""
    warm, _ = engines
    first = await generate(warm, [ChatMessage("user", "describe", (picture(1),))])
    other = await generate(warm, [ChatMessage("user", "describe", (picture(3),)), ChatMessage("assistant", "x")])
    assert first.prompt_tokens > 10 and 0 < other.cached_tokens < 8


async def test_a_batch_mixing_warm_and_cold_turns_with_images_matches_cold(engines: tuple[LocalEngine, LocalEngine]) -> None:
    """Warm image continuations (with a new image or none) and cold image prompts admitted together."""
    warm, cold = engines
    histories = []
    for n in range(3):
        history = [ChatMessage("user", f"picture {n} here", (picture(n),))]
        reply = await generate(warm, history)
        again = (picture(n + 5),) if n % 2 else ()
        histories.append([*history, ChatMessage("assistant", reply.text), ChatMessage("user", "and this?", again)])
    fresh = [[ChatMessage("user", f"new picture {n}", (picture(n + 7),))] for n in range(3)]
    prompts = [p for pair in zip(histories, fresh) for p in pair]
    params = [SamplingParams(temperature=0, max_tokens=6 + 2 * i, ignore_eos=True) for i in range(len(prompts))]
    together = await asyncio.gather(*(generate(warm, m, p) for m, p in zip(prompts, params)))
    solo = [await generate(cold, m, p) for m, p in zip(prompts, params)]
    assert [r.token_ids for r in together] == [r.token_ids for r in solo]
    assert all(w.cached_tokens > 16 and c.cached_tokens < 8 for w, c in zip(together[0::2], together[1::2]))
