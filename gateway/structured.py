"""Structured output: a `response_format` turned into a checked grammar for constrained decoding."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import llguidance
import msgspec

from gateway import protocol as p
from gateway.engine.types import Grammar
from gateway.errors import ErrorCode, GatewayError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Compact JSON: with flexible whitespace a random (or confused) model can pad forever between tokens.
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}


def response_grammar(response_format: p.ResponseFormat | None) -> Grammar | None:
    """The grammar a reply must follow, or None for free text; an unusable schema or regex is `invalid_field`."""
    if response_format is None or isinstance(response_format, p.TextFormat):
        return None
    if isinstance(response_format, p.JsonObjectFormat):
        grammar = json_grammar({"type": "object"}, "json_object")
    elif isinstance(response_format, p.JsonSchemaFormat):
        grammar = json_grammar(response_format.json_schema.schema, "json_schema")
    else:
        source = llguidance.LLMatcher.grammar_from_regex(response_format.regex)
        grammar = checked(Grammar("regex", source), "response_format.regex")
    fields = msgspec.to_builtins(response_format)
    if "json_schema" in fields:  # unset options stay unset: some servers refuse explicit nulls
        fields["json_schema"] = {k: v for k, v in fields["json_schema"].items() if v is not None}
    upstream = msgspec.json.encode({"response_format": fields}).decode()
    return dataclasses.replace(grammar, upstream=upstream)


def json_grammar(schema: dict[str, Any], kind: str = "json_schema") -> Grammar:
    source = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    return checked(Grammar("json_object" if kind == "json_object" else "json_schema", source), "response_format")


def checked(grammar: Grammar, field: str) -> Grammar:
    """The grammar, once llguidance has accepted it (cached: sessions repeat the same schema every turn)."""
    problem = _problem(grammar.source)
    if problem:
        raise GatewayError(ErrorCode.INVALID_FIELD, f"{field}: {problem.strip().splitlines()[0][:300]}")
    return grammar


@functools.lru_cache(maxsize=256)
def _problem(source: str) -> str:
    return str(llguidance.LLMatcher.validate_grammar(source))
