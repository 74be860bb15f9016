"""`--chat-template FILE` replaces (or supplies) the model's chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import make_parser
from gateway.engine.loader import ModelLoadError, load_model
from gateway.engine.types import ChatMessage
from tests.families.builders import cached_family


def test_chat_template_file_is_used(tmp_path: Path) -> None:
    """The file's template renders the prompt instead of the tokenizer's own."""
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}<|im_start|>")
    loaded = load_model(cached_family("qwen2"), chat_template=str(template))
    ids = loaded.prompt.build([ChatMessage("user", "hello")]).input_ids[0].tolist()
    assert ids == loaded.tokenizer("<|im_start|>hello<|im_start|>", add_special_tokens=False)["input_ids"]


def test_chat_template_flag_reaches_settings() -> None:
    """The serve command takes --chat-template."""
    args = make_parser().parse_args(["serve", "--chat-template", "/tmp/t.jinja"])
    assert args.chat_template == "/tmp/t.jinja"


def test_checkpoint_without_template_asks_for_one() -> None:
    """PaliGemma ships no chat template: without --chat-template it refuses to load, naming the flag."""
    with pytest.raises(ModelLoadError, match="--chat-template"):
        load_model(cached_family("paligemma"))
