"""The request type every front end maps into: options decoded strictly, bounds on each field, free JSON found."""

from __future__ import annotations

import msgspec
import pytest

from gateway.core.request import (
    FunctionSpec,
    JsonSchemaFormat,
    JsonSchemaSpec,
    NamedToolChoice,
    RegexFormat,
    SamplingOptions,
    ToolSpec,
    free_json,
)


def decode(body: str) -> SamplingOptions:
    return msgspec.json.decode(body, type=SamplingOptions)


def test_unset_options_stay_none_so_lower_layers_show_through() -> None:
    """An empty options object sets nothing: every field is None."""
    assert all(getattr(decode("{}"), name) is None for name in SamplingOptions.__struct_fields__)


def test_unknown_option_is_refused() -> None:
    """A misspelt option is an error, never silently ignored."""
    with pytest.raises(msgspec.ValidationError, match="temprature"):
        decode('{"temprature": 0.5}')


@pytest.mark.parametrize(
    "body",
    [
        '{"temperature": 5.5}',
        '{"top_p": 0}',
        '{"top_k": -1}',
        '{"max_tokens": 0}',
        '{"repetition_penalty": 0}',
        '{"stop": [""]}',
        '{"seed": -1}',
        '{"model": ""}',
    ],
)
def test_out_of_range_option_is_refused(body: str) -> None:
    """Each numeric and string option has bounds, checked when decoded."""
    with pytest.raises(msgspec.ValidationError):
        decode(body)


def test_response_format_is_chosen_by_its_type() -> None:
    """`response_format.type` picks the format; regex is the gateway's extension."""
    options = decode('{"response_format": {"type": "regex", "regex": "[a-z]+"}}')
    assert options.response_format == RegexFormat(regex="[a-z]+")


def test_unknown_response_format_type_is_refused() -> None:
    """A format type the gateway does not know is an error."""
    with pytest.raises(msgspec.ValidationError):
        decode('{"response_format": {"type": "xml"}}')


def test_tool_choice_is_a_mode_or_a_named_function() -> None:
    """tool_choice takes "auto", "none", "required" or {"type": "function", "function": {"name": ...}}."""
    assert decode('{"tool_choice": "required"}').tool_choice == "required"
    named = decode('{"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}').tool_choice
    assert isinstance(named, NamedToolChoice) and named.function.name == "get_weather"


def test_function_names_are_identifiers() -> None:
    """A function name with spaces or markup is refused, so it cannot smuggle text into a prompt."""
    with pytest.raises(msgspec.ValidationError):
        decode('{"tools": [{"type": "function", "function": {"name": "a b<|x|>"}}]}')


def test_free_json_names_each_tool_parameters_and_the_schema() -> None:
    """free_json lists every client-written JSON value with the field it came from, for the bounds check."""
    tools = [ToolSpec("function", FunctionSpec("f", parameters={"type": "object"})), ToolSpec("function", FunctionSpec("g"))]
    schema = JsonSchemaFormat(JsonSchemaSpec(name="s", schema={"type": "string"}))
    assert free_json(schema, tools) == [
        ("tools[0].function.parameters", {"type": "object"}),
        ("tools[1].function.parameters", None),
        ("response_format.json_schema.schema", {"type": "string"}),
    ]


def test_free_json_of_no_tools_and_no_schema_is_empty() -> None:
    """Plain text options carry no free JSON."""
    assert free_json(None, None) == []
