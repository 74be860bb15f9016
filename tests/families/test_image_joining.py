"""Image turns joining: fed as input embeddings in the shared, chunked rows where the family splices its images,
alone in one pass where it does not, and each equal to its own greedy `generate` either way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.client import GatewayClient
from gateway.engine.contract import GenerationRequest, TurnHandle, TurnSink
from gateway.engine.local import cross, embed_rows
from gateway.engine.local.engine import LocalEngine
from tests.families.builders import SPECS
from tests.families.test_families import BLUE, GREEN, MAX_TOKENS, RED, Served, check, serve, user

VISION = sorted(name for name, spec in SPECS.items() if spec.vision)


@pytest.fixture(scope="module", params=VISION)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(request.param, tmp_path_factory)


def prefill_passes(engine: LocalEngine) -> tuple[list[tuple[int, int]], Any]:
    """The (rows, columns) of every prefill pass the model runs from now on (a pass of more than one column
    over the cache; the stopped forward that only splices images is none), and the hook to remove."""
    passes: list[tuple[int, int]] = []

    def record(_: Any, args: Any, kwargs: dict[str, Any]) -> None:
        fed = kwargs.get("input_ids")
        shape = (fed if fed is not None else kwargs["inputs_embeds"]).shape
        if kwargs.get("cache") is not None and shape[1] > 1:
            passes.append((int(shape[0]), int(shape[1])))

    return passes, engine.loaded.model.register_forward_pre_hook(record, with_kwargs=True)


def splices(engine: LocalEngine) -> bool:
    """Whether the engine feeds image prompts as embeddings in the joining rows."""
    return embed_rows.splices(engine.loaded.prompt.family, cross.cross_layer_indices(engine.loaded.model))


@pytest.mark.parametrize("chunk", [4, 0])
async def test_an_image_turn_joining_a_decoding_one_matches_generate(
    served: Served, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image turn arriving while a text turn decodes is fed `chunk` tokens per pass between the other's
    decode steps where its family splices images into the input embeddings (in one pass with chunking off,
    or where it does not), and equals its own greedy `generate` either way."""
    engine = served.server.engine
    monkeypatch.setattr(engine._generation.joining, "chunk_tokens", chunk)
    text = f"Picture {chunk}: what colour is it?"
    passes, hook = prefill_passes(engine)
    try:
        async with GatewayClient(served.server.ws_url) as running, GatewayClient(served.server.ws_url) as joining:
            sampled = engine.tokens_generated
            await running.start_turn("r", "Count slowly.", temperature=0, max_tokens=1500, ignore_eos=True)
            while engine.tokens_generated == sampled:  # prefilled and decoding
                await asyncio.sleep(0.001)
            passes.clear()
            result = await joining.turn("j", text, [RED], temperature=0, max_tokens=MAX_TOKENS)
            await running.send({"type": "cancel", "id": "r"})
            await running.collect("r")
    finally:
        hook.remove()
    check(served, [user(text, [RED])], result)
    assert result.done is not None
    new = result.done["usage"]["prompt_tokens"] - result.done["usage"]["cached_tokens"]
    if splices(engine) and chunk:  # a chunk per pass, the running turn decoding between them
        assert passes == [(1, chunk)] * (new // chunk) + ([(1, new % chunk)] if new % chunk > 1 else [])
    else:
        assert passes == [(1, new)]


async def test_two_image_turns_admitted_together_share_one_pass(served: Served) -> None:
    """Two image turns reaching an idle engine together are prefilled in one pass of two rows where the
    family splices images (one pass each where it does not), and each equals its own greedy `generate`."""
    engine = served.server.engine
    turns = [("Two at once: the first?", [GREEN]), ("Two at once: the second?", [BLUE])]
    submit, held = engine.submit, []

    def together_at_once(request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        held.append((request, sink))  # both reach the engine in one go, as one burst
        if len(held) == len(turns):
            for args in held:
                submit(*args)
        return request.handle

    passes, hook = prefill_passes(engine)
    engine.submit = together_at_once  # type: ignore[method-assign]
    try:
        async with GatewayClient(served.server.ws_url) as one, GatewayClient(served.server.ws_url) as two:
            results = await asyncio.gather(
                *(
                    client.turn(f"p{i}", text, images, temperature=0, max_tokens=MAX_TOKENS)
                    for i, (client, (text, images)) in enumerate(zip((one, two), turns))
                )
            )
    finally:
        engine.submit = submit  # type: ignore[method-assign]
        hook.remove()
    for (text, images), result in zip(turns, results):
        check(served, [user(text, images)], result)
    assert [rows for rows, _ in passes] == ([2] if splices(engine) else [1, 1])


def test_only_families_that_splice_images_feed_them_as_embeddings(served: Served) -> None:
    """The families whose images only replace their placeholders' input embeddings, under causal attention,
    feed image prompts as embeddings; bidirectional image attention (Gemma 3, PaliGemma), cross-attention
    (mllama) and features added inside the layers (Qwen3-VL's deepstack) keep one pass per image prompt."""
    assert splices(served.server.engine) is (served.name not in ("gemma3", "paligemma", "mllama", "qwen3_vl"))
