"""Model loading: plain directories, LoRA adapter directories, text-only models."""

from __future__ import annotations

import asyncio

import pytest

from gateway.engine.contract import ChatMessage, SamplingParams
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import ModelLoadError, load_model
from gateway.errors import ErrorCode, GatewayError
from tests.conftest import DemoDirs, chat_image
from tests.unit.engine.test_engine import generate

PROMPT = [ChatMessage("user", "Say something about cats.")]


async def greedy_tokens(model_dir: object, **kwargs: object) -> tuple[int, ...]:
    engine = LocalEngine(load_model(model_dir, **kwargs))  # type: ignore[arg-type]
    engine.start()
    try:
        result, _ = await generate(engine, SamplingParams(temperature=0, max_tokens=16), PROMPT)
        return result.token_ids
    finally:
        await asyncio.to_thread(engine.stop)


def test_plain_directory_loads_as_vision_model(demo_dirs: DemoDirs) -> None:
    """The demo directory loads through the image-text-to-text auto class, with fp32 on CPU."""
    loaded = load_model(demo_dirs.model)
    assert loaded.prompt.vision and loaded.adapter is None
    assert type(loaded.model).__name__ == "Glm4vForConditionalGeneration"
    assert str(loaded.dtype) == "torch.float32" and loaded.device.type == "cpu"


async def test_adapter_directory_changes_greedy_output(demo_dirs: DemoDirs) -> None:
    """An adapter directory loads its base with peft and changes the base's greedy reply."""
    loaded = load_model(demo_dirs.adapter)
    assert loaded.adapter is not None and type(loaded.model).__name__ == "PeftModel"
    assert await greedy_tokens(demo_dirs.adapter) != await greedy_tokens(demo_dirs.model)


async def test_base_model_override(demo_dirs: DemoDirs, tmp_path: object) -> None:
    """--base-model replaces the adapter's base_model_name_or_path."""
    loaded = load_model(demo_dirs.adapter, base_model=str(demo_dirs.model))
    assert loaded.adapter is not None


def test_adapter_with_missing_base_is_a_clear_error(demo_dirs: DemoDirs) -> None:
    """A base model path that does not exist is named in the error (nothing is downloaded)."""
    with pytest.raises(ModelLoadError, match="not a local directory"):
        load_model(demo_dirs.adapter, base_model="/nonexistent/base")


def test_text_only_model_rejects_images(demo_dirs: DemoDirs) -> None:
    """A causal LM loads as text-only, and a prompt with an image is refused with images_unsupported."""

    loaded = load_model(demo_dirs.text_model)
    assert not loaded.prompt.vision
    image = chat_image(size=(32, 32))
    with pytest.raises(GatewayError) as caught:
        loaded.prompt.count([ChatMessage("user", "what is this?", (image,))])
    assert caught.value.code == ErrorCode.IMAGES_UNSUPPORTED


async def test_text_only_model_generates(demo_dirs: DemoDirs) -> None:
    """The text-only path streams a reply too."""
    assert len(await greedy_tokens(demo_dirs.text_model)) >= 1


def test_not_a_directory(tmp_path: object) -> None:
    """A path that is not a model directory fails with a message, not a traceback from transformers."""
    with pytest.raises(ModelLoadError):
        load_model("/nonexistent/model")
