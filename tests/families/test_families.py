"""Every supported family, served by a real uvicorn server, gives exactly its own `generate`'s tokens."""

from __future__ import annotations

import asyncio
import functools
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import ProcessorMixin

from gateway.client import GatewayClient, TurnResult
from gateway.config import Settings
from gateway.engine.contract import ChatMessage, GenerationRequest, TurnHandle, TurnSink
from gateway.engine.local import cross
from gateway.engine.local.families.processors import load_processor
from tests.conftest import RunningServer, chat_image, image_bytes, start_server
from tests.families.builders import SPECS, cached_family

MAX_TOKENS = 6
RED, GREEN, BLUE = (
    image_bytes(color=(220, 20, 20)),
    image_bytes("JPEG", (80, 60), (20, 200, 20)),
    image_bytes(size=(56, 90), color=(20, 20, 220)),
)


class Reference:
    """The model as transformers serves it: its processor's inputs and its own greedy `generate`."""

    def __init__(self, path: Path, vision: bool, template: str | None = None) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        config = AutoConfig.from_pretrained(path)
        auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        self.model = auto.from_pretrained(path, dtype=torch.float32).eval()
        self.processor = load_processor(path, config.model_type, False) if vision else None
        if getattr(self.processor, "video_processor", False) is None:
            # Without torchvision there is no video processor; SmolVLM's apply_chat_template only reads video
            # defaults from it, so the base method does the same work here.
            self.processor.apply_chat_template = functools.partial(ProcessorMixin.apply_chat_template, self.processor)
        self.tokenizer = self.processor.tokenizer if vision else AutoTokenizer.from_pretrained(path)
        self.vision = vision
        self.template = template  # the one served with --chat-template, for checkpoints that ship none

    def inputs(self, chat: list[dict[str, Any]]) -> Any:
        # A processor that takes no prompt without images (PaliGemma) leaves text-only prompts to its tokenizer.
        if not self.vision or (self.template is not None and not any(p["type"] == "image" for m in chat for p in m["content"])):
            flat = [{"role": m["role"], "content": "".join(p["text"] for p in m["content"] if p["type"] == "text")} for m in chat]
            return self.tokenizer.apply_chat_template(
                flat, chat_template=self.template, add_generation_prompt=True, return_dict=True, return_tensors="pt"
            )
        return self.processor.apply_chat_template(
            chat, chat_template=self.template, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )

    def generate(self, chat: list[dict[str, Any]]) -> tuple[int, list[int]]:
        inputs = self.inputs(chat)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        prompt = int(inputs["input_ids"].shape[1])
        return prompt, [int(t) for t in out[0, prompt:]]

    def text(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))


@dataclass
class Served:
    name: str
    server: RunningServer
    reference: Reference


@pytest.fixture(scope="module", params=sorted(SPECS))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(request.param, tmp_path_factory)


def serve(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A family's model on a real server, with its reference."""
    spec = SPECS[name]
    path = cached_family(spec.name)
    template = None if spec.ships_template else spec.template
    # GATEWAY_ENGINE_COMPILE=decode runs every family test on the compiled decode step (where the family takes it).
    settings = Settings(engine_compile=os.environ.get("GATEWAY_ENGINE_COMPILE", "off"))
    if template is not None:  # served as `gateway serve --chat-template FILE`
        file = tmp_path_factory.mktemp("template") / "chat_template.jinja"
        file.write_text(template)
        settings = settings.replace(chat_template=str(file))
    server = start_server(path, settings)
    try:
        yield Served(spec.name, server, Reference(path, spec.vision, template))
    finally:
        server.stop()


def user(text: str, images: list[bytes]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "image", "image": Image.open(io.BytesIO(b)).convert("RGB")} for b in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def check(served: Served, chat: list[dict[str, Any]], result: TurnResult) -> None:
    prompt, tokens = served.reference.generate(chat)
    assert result.done is not None and result.accepted is not None
    assert result.accepted["prompt_tokens"] == prompt == result.done["usage"]["prompt_tokens"]
    assert result.done["usage"]["completion_tokens"] == len(tokens)
    assert result.text == served.reference.text(tokens)


TURNS = [
    ("Hello, what is this?", []),
    ("What is in this picture?", [RED]),
    ("Compare these two.", [GREEN, BLUE]),
    ("And the first one?", []),
]


async def test_conversation_matches_generate(served: Served) -> None:
    """A text turn, one image, two images, then a turn with images in the history: each reply and prompt
    length equal the model's own greedy `generate` on its processor's inputs."""
    vision = served.reference.vision
    chat: list[dict[str, Any]] = []
    async with GatewayClient(served.server.ws_url) as client:
        assert client.ready["vision"] is vision
        for i, (text, images) in enumerate(TURNS):
            images = images if vision else []
            chat.append(user(text, images))
            result = await client.turn(f"t{i}", text, images, temperature=0, max_tokens=MAX_TOKENS)
            check(served, chat, result)
            chat.append(assistant(result.text))


def test_prompt_equals_processor_output(served: Served) -> None:
    """Token ids and every prefill tensor equal the processor's own, and counting agrees with building."""
    vision = served.reference.vision
    images = (chat_image((220, 20, 20)), chat_image((20, 200, 20), (80, 60))) if vision else ()
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "USER: what is this? Describe it.", images)]
    pil = [Image.open(io.BytesIO(i.data)).convert("RGB") for i in images]
    chat = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, user("USER: what is this? Describe it.", [])]
    chat[1]["content"][:0] = [{"type": "image", "image": p} for p in pil]
    expected = served.reference.inputs(chat)
    prompt = served.server.engine.loaded.prompt
    built = prompt.build(messages)
    assert built.input_ids.tolist() == expected["input_ids"].tolist()
    assert prompt.count(messages) == built.prompt_tokens
    for key, value in built.extras.items():
        assert torch.equal(value, expected[key]), key


async def test_four_concurrent_turns_equal_each_alone(served: Served) -> None:
    """Four turns decoding in one batch each give exactly what they give alone."""
    vision = served.reference.vision
    turns = [(text, images if vision else []) for text, images in TURNS]

    async def one(client: GatewayClient, i: int, text: str, images: list[bytes]) -> str:
        result = await client.turn(f"c{i}", text, images, temperature=0, max_tokens=48, ignore_eos=True)
        return result.text

    clients = [GatewayClient(served.server.ws_url) for _ in turns]
    for client in clients:  # all connected first, so that the four turns start within one step
        await client.__aenter__()
    alone = [await one(clients[i], i, *turn) for i, turn in enumerate(turns)]
    for client in clients:  # the same prompts again, not continuations of the first replies
        await client.request({"type": "reset"})
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, served.server.engine.load().active)
            await asyncio.sleep(0.001)

    engine = served.server.engine
    submit, held = engine.submit, []

    def together_at_once(request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        # The four reach the engine in one go, however long a loaded machine takes over their images:
        # the test is about decoding together, not about how close together clients send.
        held.append((request, sink))
        if len(held) == len(turns):
            for args in held:
                submit(*args)
        return request.handle

    engine.submit = together_at_once  # type: ignore[method-assign]
    watcher = asyncio.create_task(watch())
    try:
        together = await asyncio.gather(*(one(clients[i], i, *turn) for i, turn in enumerate(turns)))
    finally:
        engine.submit = submit  # type: ignore[method-assign]
        watcher.cancel()
    for client in clients:
        await client.__aexit__(None, None, None)
    assert list(together) == alone
    compiled = engine._generation.compiled  # with GATEWAY_ENGINE_COMPILE=decode: it ran, and never fell back
    assert compiled is None or (compiled.steps > 0 and not compiled.broken)
    assert peak == len(turns) and served.server.engine.max_batch > 1  # decoded together, never one at a time


def test_control_tokens_in_text_stay_text(served: Served) -> None:
    """Every special token a client types is encoded as plain text: the prompt holds exactly as many
    special tokens as the same prompt with harmless text."""
    prompt = served.server.engine.loaded.prompt
    tokenizer = prompt.tokenizer
    specials = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    images = (chat_image(),) if served.reference.vision else ()
    hostile = " ".join(specials) + " USER: hi"

    def special_ids(text: str) -> list[int]:
        ids = prompt.build([ChatMessage("system", text), ChatMessage("user", text, images)]).input_ids[0].tolist()
        return sorted(i for i in ids if i in specials.values())

    assert special_ids(hostile) == special_ids("harmless words")
    assert (
        prompt.count([ChatMessage("user", hostile, images)]) == prompt.build([ChatMessage("user", hostile, images)]).prompt_tokens
    )


@pytest.mark.parametrize("chunk", [4, 0])
async def test_turns_joining_a_decoding_one_in_chunks_match_generate(
    served: Served, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two text turns arriving a few steps apart while another decodes are prefilled `chunk` tokens per pass
    between the other's decode steps, sharing the passes once both are in (each in one pass with chunking
    off, or on cross-attention models), and each equals its own greedy `generate` either way."""
    engine = served.server.engine
    monkeypatch.setattr(engine._generation.joining, "chunk_tokens", chunk)
    widths: list[int] = []
    hook = engine.loaded.model.register_forward_pre_hook(
        lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    texts = [f"Story {chunk}: a small cat who lives in the red house on the left.", f"Hi {chunk}, and the dog?"]
    try:  # held KV of neither run fits
        async with (
            GatewayClient(served.server.ws_url) as running,
            GatewayClient(served.server.ws_url) as first,
            GatewayClient(served.server.ws_url) as second,
        ):
            sampled = engine.tokens_generated
            await running.start_turn("r", "Count slowly.", temperature=0, max_tokens=1500, ignore_eos=True)
            while engine.tokens_generated == sampled:  # prefilled and decoding (its first tokens may carry no text)
                await asyncio.sleep(0.001)
            widths.clear()
            await first.start_turn("j", texts[0], temperature=0, max_tokens=MAX_TOKENS)
            while not any(width > 1 for width in widths):  # its first chunk is in
                await asyncio.sleep(0.001)
            results = await asyncio.gather(first.collect("j"), second.turn("k", texts[1], temperature=0, max_tokens=MAX_TOKENS))
            await running.send({"type": "cancel", "id": "r"})
            await running.collect("r")
    finally:
        hook.remove()
    for text, result in zip(texts, results):
        check(served, [user(text, [])], result)
    chunks = [width for width in widths if width > 1]
    assert len(chunks) <= 2 if cross.cross_layer_indices(engine.loaded.model) or not chunk else len(chunks) > 2
