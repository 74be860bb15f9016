"""EncoderCache: each image's share of an encoder output, byte-bounded, used only when every image is held."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from gateway.engine.local.encoder_cache import EncoderCache
from gateway.engine.local.image_layout import ImageLayout, Stacked

PIXELS = torch.zeros(2, 3)


def output(pooled: Any) -> dict[str, Any]:
    return {"image_outputs": SimpleNamespace(pooler_output=pooled)}


def layout(tokens: tuple[int, ...] = (), rows: tuple[int, ...] = ()) -> ImageLayout:
    stacked = {"pixel_values": Stacked(0, rows)} if rows else {}
    return ImageLayout(spans=(), stacked=stacked, per_token=(), tokens=tokens)


def test_a_pass_whose_images_are_all_held_gets_their_outputs_instead_of_pixels() -> None:
    cache = EncoderCache(1 << 20, "per_image")
    a, b = torch.ones(4, 8), torch.full((4, 8), 2.0)
    cache.keep(["a", "b"], output((a, b)), layout(), 0)
    extras = {"pixel_values": PIXELS, "image_sizes": torch.ones(2, 2)}
    given = cache.inputs(["b", "a"], extras)
    assert "pixel_values" not in given and torch.equal(given["image_sizes"], extras["image_sizes"])
    pooled = given["mm_encoder_outputs"]["image"].pooler_output
    assert torch.equal(pooled[0], b) and torch.equal(pooled[1], a) and cache.hits == 1
    assert cache.inputs(["a", "c"], extras) is extras and cache.hits == 1  # one image not held: all encoded


def test_outputs_are_split_as_the_family_holds_them() -> None:
    """Pixel rows (tiles) and token rows (one item per prompt) split by each image's own extent."""
    tiles = EncoderCache(1 << 20, "pixel_rows")
    tiles.keep(["a", "b"], output(torch.arange(5 * 2.0).view(5, 2)), layout(rows=(3, 2)), 0)
    assert torch.equal(
        tiles.inputs(["b"], {"pixel_values": PIXELS})["mm_encoder_outputs"]["image"].pooler_output,
        torch.tensor([[6.0, 7], [8, 9]]),
    )
    tokens = EncoderCache(1 << 20, "token_rows")
    tokens.keep(["b"], output([torch.ones(4, 2)]), layout(tokens=(2, 4)), 1)  # the prompt's second image
    assert len(tokens) == 1 and tokens.inputs(["b"], {"pixel_values": PIXELS})["mm_encoder_outputs"]["image"].pooler_output[
        0
    ].shape == (4, 2)
    tokens.keep(["c", "d"], output([torch.ones(5, 2)]), layout(tokens=(2, 4)), 0)  # sizes disagree: nothing held
    assert len(tokens) == 1


def test_held_bytes_stay_within_the_budget_least_recent_first() -> None:
    one = torch.ones(4, 8)
    cache = EncoderCache(2 * one.numel() * one.element_size(), "per_image")
    cache.keep(["a", "b"], output((one, one)), layout(), 0)
    cache.inputs(["a"], {"pixel_values": PIXELS})  # a is now the most recent
    cache.keep(["c"], output((one,)), layout(), 0)
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    assert cache.inputs(["b"], {"pixel_values": PIXELS}).get("mm_encoder_outputs") is None
    assert cache.inputs(["a", "c"], {"pixel_values": PIXELS}).get("mm_encoder_outputs") is not None


def test_a_family_whose_outputs_are_not_all_its_model_takes_holds_nothing() -> None:
    cache = EncoderCache(1 << 20, None)
    cache.keep(["a"], output((torch.ones(2, 2),)), layout(), 0)
    assert len(cache) == 0 and cache.max_bytes == 0


def test_per_layer_deepstack_features_are_held_per_image_and_given_back() -> None:
    """Qwen3-VL's encoder output also carries, per layer, each image's features: they travel with it."""
    cache = EncoderCache(1 << 20, "per_image")
    a, b = torch.ones(2, 4), torch.zeros(2, 4)
    layers = [(a + 10, b + 10), (a + 20, b + 20)]
    cache.keep(["a", "b"], {"image_outputs": SimpleNamespace(pooler_output=(a, b), deepstack_features=layers)}, layout(), 0)
    given = cache.inputs(["b"], {"pixel_values": PIXELS})["mm_encoder_outputs"]["image"]
    assert torch.equal(given.pooler_output[0], b)
    assert [torch.equal(layer[0], b + 10 * (n + 1)) for n, layer in enumerate(given.deepstack_features)] == [True, True]
    cache.keep(["c"], {"image_outputs": SimpleNamespace(pooler_output=(a,), deepstack_features=[a])}, layout(), 0)
    assert len(cache) == 2  # deepstack features not one per image: nothing held


def test_a_pass_with_new_images_encodes_those_alone_and_takes_the_rest() -> None:
    """Held images come from the cache; the tower runs on the new ones' rows only, given whole what it
    takes whole; a tower that will not run alone leaves the pass as it was."""
    cache = EncoderCache(1 << 20, "pixel_rows")
    rows = layout(rows=(1, 2, 1))
    pixels = torch.arange(4.0).view(4, 1)  # image 0: row 0; image 1: rows 1-2; image 2: row 3
    cache.keep(["b"], output(torch.full((2, 3), 7.0)), rows, 1)
    seen: list[dict[str, torch.Tensor]] = []

    def encode(tensors: dict[str, torch.Tensor]) -> Any:
        seen.append(tensors)
        return SimpleNamespace(pooler_output=tensors["pixel_values"].expand(-1, 3) * 10)

    extras = {"pixel_values": pixels, "batch_num_images": torch.tensor([3])}
    given = cache.inputs(["a", "b", "c"], extras, rows, 0, encode)
    assert torch.equal(seen[0]["pixel_values"], torch.tensor([[0.0], [3.0]])) and torch.equal(
        seen[0]["batch_num_images"], torch.tensor([3])
    )
    pooled = given["mm_encoder_outputs"]["image"].pooler_output
    assert pooled[:, 0].tolist() == [0.0, 7.0, 7.0, 30.0] and cache.encoded == 2 and cache.hits == 1 and len(cache) == 3

    def broken(tensors: dict[str, torch.Tensor]) -> Any:
        raise RuntimeError("this tower needs the whole prompt")

    assert cache.inputs(["a", "d"], {"pixel_values": pixels[:2]}, layout(rows=(1, 1)), 0, broken)["pixel_values"] is not None


def test_a_pass_that_gives_no_output_back_has_all_its_new_images_encoded_and_held() -> None:
    """`whole` (an image prompt spliced into embeddings: its forward stops before the model returns the encoder
    output): with no image held, the tower runs here on all of them and they are held; no hit is counted, and
    nothing counts as encoded beside held images."""
    cache = EncoderCache(1 << 20, "pixel_rows")
    rows = layout(rows=(1, 1))

    def encode(tensors: dict[str, torch.Tensor]) -> Any:
        return SimpleNamespace(pooler_output=tensors["pixel_values"].expand(-1, 3) + 1)

    extras = {"pixel_values": torch.arange(2.0).view(2, 1)}
    assert cache.inputs(["a", "b"], extras, rows, 0, encode) is extras  # not whole: the model's own pass encodes
    given = cache.inputs(["a", "b"], extras, rows, 0, encode, whole=True)
    assert given["mm_encoder_outputs"]["image"].pooler_output[:, 0].tolist() == [1.0, 2.0]
    assert len(cache) == 2 and cache.hits == 0 and cache.encoded == 0
