"""Tool-call syntaxes, one per family: parsing each template's layout, forced calls that parse, the stream filter."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest
import torch
from transformers import AutoTokenizer

from gateway.engine.contract import GenerationResult, Grammar, ToolCall
from gateway.engine.local.constrain import GrammarVocabulary
from gateway.tools.formats import ToolFormat
from gateway.tools.glm import GlmFormat
from gateway.tools.hermes import HermesFormat
from gateway.tools.llama3 import Llama3Format
from gateway.tools.mistral import MistralFormat
from gateway.tools.registry import detect
from gateway.tools.stream import ToolCallFilter
from tests.conftest import DemoDirs
from tests.e2e.test_tools_ws import SCHEMAS, TOOLS

PARIS = {"city": "Paris", "unit": "C"}

# How each family's chat template writes an assistant turn with calls (and so how its models reply).
LAYOUTS: list[tuple[ToolFormat, str, list[tuple[str, dict[str, object]]]]] = [
    (  # Qwen 2.5 / Qwen 3: one <tool_call> block per call, a newline between blocks
        HermesFormat(),
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC", "hours": 3}}\n</tool_call>',
        [("get_weather", PARIS), ("get_time", {"zone": "UTC", "hours": 3})],
    ),
    (  # Llama 3.1-3.3 JSON tool calling (custom tools): the whole reply is one JSON object
        Llama3Format(),
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}',
        [("get_weather", PARIS)],
    ),
    (
        Llama3Format(),
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}',
        [("get_weather", PARIS)],
    ),
    (  # Mistral v3 tokenizers: [TOOL_CALLS] then a JSON list (the control token itself is dropped when decoding)
        MistralFormat(),
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]',
        [("get_weather", PARIS)],
    ),
    (MistralFormat(), '[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]', [("get_weather", PARIS)]),
    (  # GLM-4.5 / 4.6 / 4.5V: keys and values in tags, string values bare
        GlmFormat(),
        "I'll look.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
        "<arg_key>unit</arg_key>\n<arg_value>C</arg_value>\n</tool_call>",
        [("get_weather", PARIS)],
    ),
]


@pytest.mark.parametrize(("syntax", "text", "expected"), LAYOUTS)
def test_each_family_layout_parses_to_its_calls(
    syntax: ToolFormat, text: str, expected: list[tuple[str, dict[str, object]]]
) -> None:
    """Names and arguments come out of each family's own layout; arguments are JSON object text."""
    calls = syntax.parse(text).calls
    assert [(c.name, json.loads(c.arguments)) for c in calls] == expected
    assert len({c.id for c in calls}) == len(calls)


@pytest.mark.parametrize("syntax", [HermesFormat(), Llama3Format(), MistralFormat(), GlmFormat()])
@pytest.mark.parametrize("text", ["Just words.", '{"name": broken', "<tool_call>\nnot json\n</tool_call>", "[1, 2]"])
def test_plain_or_broken_text_is_no_call(syntax: ToolFormat, text: str) -> None:
    """Anything that does not parse cleanly is text, never a half call."""
    parsed = syntax.parse(text)
    assert parsed.calls == () and parsed.content == text


def test_mistral_ids_are_nine_alphanumerics() -> None:
    """Mistral's templates refuse any other call id."""
    call_id = MistralFormat().new_call_id()
    assert len(call_id) == 9 and call_id.isalnum()


@pytest.mark.parametrize(
    ("template", "name"),
    [
        ("{% for t in tools %}<tool_call>{% endfor %}", "hermes"),
        ("<|python_tag|>{{ tools }}<|eot_id|>", "llama3"),
        ("[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]", "mistral"),
        ("<tool_call>{{ name }}<arg_key>{{ k }}</arg_key>", "glm"),
        (None, "hermes"),
    ],
)
def test_syntax_is_detected_from_the_template(template: str | None, name: str) -> None:
    assert detect(template).name == name


@pytest.mark.parametrize("syntax", [HermesFormat(), Llama3Format(), MistralFormat(), GlmFormat()])
def test_forced_call_grammar_always_parses_to_a_valid_call(demo_dirs: DemoDirs, syntax: ToolFormat) -> None:
    """Random walks through each family's forced-call grammar (demo vocabulary) parse as one valid call."""
    tokenizer = AutoTokenizer.from_pretrained(demo_dirs.model)
    vocabulary = GrammarVocabulary(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    rng = random.Random(0)
    for _ in range(6):
        grammar = vocabulary.matcher(Grammar("tool_call", syntax.grammar(TOOLS)))
        bitmask = torch.zeros(1, vocabulary.words, dtype=torch.int32)
        ids: list[int] = []
        while not grammar.complete and len(ids) < 400:
            grammar.fill(bitmask, 0)
            allowed = [t for t in range(len(tokenizer)) if bitmask[0, t // 32] >> (t % 32) & 1]
            token = rng.choice(allowed)
            assert grammar.accept(token)
            ids.append(token)
        assert grammar.complete
        [call] = syntax.parse(tokenizer.decode(ids, skip_special_tokens=True)).calls
        jsonschema_validate(call)


def jsonschema_validate(call: ToolCall) -> None:
    import jsonschema

    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


@dataclass
class Recorder:
    events: list[object] = field(default_factory=list)

    def on_queued(self, position: int) -> None: ...

    def on_token(self, text: str) -> None:
        self.events.append(text)

    def on_tool_call(self, call: ToolCall) -> None:
        self.events.append(call.name)

    def on_done(self, result: GenerationResult) -> None:
        self.events.append((result.finish_reason, result.text, len(result.tool_calls)))


def result(text: str, reason: str = "stop") -> GenerationResult:
    return GenerationResult(reason, text, (), 1, 1.0, 1.0, 1.0)  # type: ignore[arg-type]


def test_filter_streams_text_before_the_call_and_holds_the_call() -> None:
    """Text up to the opening streams; a split opening is held; the call comes before done (tool_calls)."""
    sink = Recorder()
    stream = ToolCallFilter(sink, HermesFormat())
    pieces = ["Sure. <tool", '_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}', "\n</tool_call>"]
    for piece in pieces:
        stream.on_token(piece)
    stream.on_done(result("".join(pieces)))
    assert sink.events == ["Sure. ", "get_weather", ("tool_calls", "Sure. ", 1)]


def test_filter_releases_held_text_that_was_no_call() -> None:
    """A `<` that never became a call, or a call cut by max_tokens, is sent as text before done."""
    sink = Recorder()
    stream = ToolCallFilter(sink, HermesFormat())
    stream.on_token("a <tool")
    stream.on_done(result("a <tool", "length"))
    assert sink.events == ["a ", "<tool", ("length", "a <tool", 0)]


def test_llama3_semicolons_inside_strings_do_not_split_calls() -> None:
    """Several calls are separated by `;`, but a `;` inside an argument is just text."""
    text = '{"name": "a", "parameters": {"q": "x; y"}}; {"name": "b", "parameters": {}}'
    assert [(c.name, json.loads(c.arguments)) for c in Llama3Format().parse(text).calls] == [("a", {"q": "x; y"}), ("b", {})]
