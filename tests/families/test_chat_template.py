"""`--chat-template FILE` replaces (or supplies) the model's chat template; client text in tool definitions stays text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import make_parser
from gateway.engine.contract import ChatMessage
from gateway.engine.local.loader import ModelLoadError, load_model
from gateway.engine.local.prompt import PromptBuilder
from tests.families.builders import SPECS, cached_family, train_tokenizer


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


# ---- text stays text in tool definitions ----------------------------------------------------------------

# How the families' own templates print tools (their tool-rendering parts, in front of each family's layout):
# Qwen 2.5/3 (Hermes) and GLM-4.5 write each tool with `tojson`, Llama 3.1 with `tojson(indent=4)`, Mistral
# writes each function's keys itself and the values with `tojson`, Qwen3-Coder loops over the parameters.
# "fallback": the family's layout alone, which renders no tools: the gateway describes them in the system prompt.
TOOL_TEMPLATES = {
    "fallback": "",
    "hermes": "<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n",
    "glm": "# Tools\n{% for tool in tools %}\n{{ tool | tojson(ensure_ascii=False) }}{% endfor %}\n",
    "llama3": "{% for t in tools %}{{ t | tojson(indent=4) }}\n\n{% endfor %}",
    "mistral": (
        "[AVAILABLE_TOOLS] [{% for tool in tools %}{% set tool = tool.function %}"
        '{{ \'{"type": "function", "function": {\' }}'
        "{% for key, val in tool.items() if key != 'return' %}{% if val is string %}"
        "{{ '\"' + key + '\": \"' + val + '\"' }}{% else %}{{ '\"' + key + '\": ' + val | tojson }}{% endif %}"
        "{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}{{ '}}' }}"
        "{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}][/AVAILABLE_TOOLS]\n"
    ),
    "qwen3_coder": (
        "{% for tool in tools %}<function><name>{{ tool.function.name }}</name>"
        "<description>{{ tool.function.description }}</description>"
        "{% for name, p in tool.function.parameters.properties.items() %}<parameter><name>{{ name }}</name>"
        "<description>{{ p.description }}</description>{% if p.enum is defined %}<enum>{{ p.enum | tojson }}</enum>{% endif %}"
        "<default>{{ p.default }}</default></parameter>{% endfor %}</function>{% endfor %}\n"
    ),
}


def tool_with(text: str) -> dict[str, Any]:
    """A tool whose parameter names, enums, descriptions and defaults all carry `text`."""
    parameter = {"type": "string", "description": f"d{text}", "enum": [f"e{text}", "ok"], "default": f"v{text}"}
    nested = {"type": "object", "properties": {f"inner{text}": {"type": "integer"}}, "required": [f"inner{text}"]}
    parameters = {"type": "object", "properties": {f"n{text}": parameter, "nested": nested}, "required": [f"n{text}"]}
    function = {"name": "lookup", "description": f"Look up{text}", "parameters": parameters}
    return {"type": "function", "function": function}


@pytest.fixture(scope="module")
def family_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each family's tokenizer (trained small, with the family's special tokens), built once."""
    return {name: train_tokenizer(spec, tmp_path_factory.mktemp(name)) for name, spec in SPECS.items()}


@pytest.mark.parametrize("layout", sorted(TOOL_TEMPLATES))
@pytest.mark.parametrize("family", sorted(SPECS))
def test_control_tokens_in_tool_definitions_stay_text(family_tokenizers: dict[str, Any], family: str, layout: str) -> None:
    """Every special token of the family, written in parameter names, enums, descriptions and defaults,
    adds no special-token id to the prompt: the ids are the template's own, as with harmless text."""
    tokenizer = family_tokenizers[family]
    builder = PromptBuilder(tokenizer, chat_template=TOOL_TEMPLATES[layout] + SPECS[family].template)
    special = set(tokenizer.added_tokens_encoder.values())
    hostile = "".join(SPECS[family].tokens)

    def special_ids(text: str) -> Counter[int]:
        ids = builder.build([ChatMessage("user", "hi")], [tool_with(text)]).input_ids[0].tolist()
        return Counter(i for i in ids if i in special)

    assert special_ids(hostile) == special_ids("x")
