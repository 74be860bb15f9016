"""Structured output: a `response_format` or forced tool call as a grammar, checked once per distinct source."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llguidance
import msgspec

from gateway.core import request as req
from gateway.core.format_keys import format_key
from gateway.engine.contract import Grammar
from gateway.errors import ErrorCode, GatewayError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Compact JSON: with flexible whitespace a random (or confused) model can pad forever between tokens.
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}


@dataclass(frozen=True)
class GrammarLimits:
    """One compile's budget: the source's size, then llguidance's own fuel (time) and lexer-state (memory)
    caps; each refusal names the setting that bounds it."""

    max_bytes: int = 1024 * 1024  # max_grammar_bytes
    lexer_fuel: int = 1_000_000  # grammar_lexer_fuel: llguidance's initial_lexer_fuel, about 50k a millisecond
    max_lexer_states: int = 50_000  # grammar_max_lexer_states: about 1-2 kB each

    def parser_limits(self) -> llguidance.LLParserLimits:
        return llguidance.LLParserLimits(
            initial_lexer_fuel=self.lexer_fuel, max_lexer_states=self.max_lexer_states, verbose_errors=False
        )

    def refusal(self, field: str, problem: str) -> GatewayError:
        """llguidance's complaint, with the setting behind a budget it ran out of."""
        line = problem.strip().splitlines()[0][:300]
        if "too big" in line or "fuel" in line:
            line += f" (grammar_lexer_fuel is {self.lexer_fuel})"
        elif "states" in line:
            line += f" (grammar_max_lexer_states is {self.max_lexer_states})"
        return GatewayError(ErrorCode.INVALID_FIELD, f"{field}: {line}")


DEFAULT_LIMITS = GrammarLimits()

# How a source is checked: llguidance's answer ("" when usable). The local engine's checker also keeps the
# compiled matcher, so its generation thread copies it instead of compiling again.
Checker = Callable[[str, GrammarLimits], str]


def validate(source: str, limits: GrammarLimits) -> str:
    """The check without a tokenizer (an upstream engine compiles on its own side)."""
    return str(llguidance.LLMatcher.validate_grammar(source, limits=limits.parser_limits()))


class CheckedGrammars:
    """Each distinct source's outcome (the grammar, or the refusal), keyed by a sha256 of the source, so
    repeats cost a hash; least recently used first out past `capacity_bytes` of grammar text. Shared by
    the event loop and the compile workers."""

    def __init__(self, capacity_bytes: int = 64 * 1024 * 1024) -> None:
        self.capacity_bytes = capacity_bytes
        self.held_bytes = 0
        self._entries: OrderedDict[str, Grammar | GatewayError] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Grammar | GatewayError | None:
        with self._lock:
            outcome = self._entries.get(key)
            if outcome is not None:
                self._entries.move_to_end(key)
            return outcome

    def put(self, key: str, outcome: Grammar | GatewayError) -> None:
        with self._lock:
            previous = self._entries.pop(key, None)
            self.held_bytes += _size(outcome) - (_size(previous) if previous is not None else 0)
            self._entries[key] = outcome
            while self.held_bytes > self.capacity_bytes and len(self._entries) > 1:
                self.held_bytes -= _size(self._entries.popitem(last=False)[1])


def _size(outcome: Grammar | GatewayError) -> int:
    """Roughly what an outcome holds: its texts (a refusal's message is short)."""
    if isinstance(outcome, GatewayError):
        return len(outcome.message) + 100
    return len(outcome.source) + len(outcome.upstream) + 100


CHECKED = CheckedGrammars()


def source_key(grammar: Grammar) -> str:
    return hashlib.sha256(f"{grammar.kind}\n{grammar.source}".encode()).hexdigest()


def response_grammar(response_format: req.ResponseFormat | None) -> Grammar | None:
    """The grammar a reply must follow, or None for free text; an unusable schema or regex is `invalid_field`.
    Cached: the compile pool has usually checked it already, so this is a hash and a look-up."""
    if response_format is None or isinstance(response_format, req.TextFormat):
        return None
    key, size = format_key(response_format)
    outcome = CHECKED.get(key)
    if outcome is None:
        outcome = compile_format(response_format, size, DEFAULT_LIMITS, validate)
        CHECKED.put(key, outcome)
    return settled(outcome)


def settled(outcome: Grammar | GatewayError) -> Grammar:
    """The grammar, or its refusal raised afresh (a cached exception would carry every earlier traceback)."""
    if isinstance(outcome, GatewayError):
        raise GatewayError(outcome.code, outcome.message)
    return outcome


def compile_format(
    response_format: req.ResponseFormat, size: int, limits: GrammarLimits, check: Checker
) -> Grammar | GatewayError:
    """The heavy part, for a worker: the format's grammar, checked within `limits`, or the refusal."""
    if size > limits.max_bytes:
        return GatewayError(ErrorCode.INVALID_FIELD, f"response_format is {size} bytes; max_grammar_bytes is {limits.max_bytes}")
    try:
        grammar, field = format_source(response_format)
    except ValueError as exc:  # a schema llguidance cannot read as JSON (an integer beyond 64 bits, say)
        return GatewayError(ErrorCode.INVALID_FIELD, f"response_format: {str(exc)[:300]}")
    problem = check(grammar.source, limits)
    return limits.refusal(field, problem) if problem else grammar


def format_source(response_format: req.ResponseFormat) -> tuple[Grammar, str]:
    """The format's llguidance source, unchecked, with the request fields an upstream enforces."""
    if isinstance(response_format, req.JsonObjectFormat):
        source = llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
        grammar, field = Grammar("json_object", source), "response_format"
    elif isinstance(response_format, req.JsonSchemaFormat):
        source = llguidance.LLMatcher.grammar_from_json_schema(response_format.json_schema.schema, defaults=JSON_OPTIONS)
        grammar, field = Grammar("json_schema", source), "response_format"
    else:
        assert isinstance(response_format, req.RegexFormat)
        grammar = Grammar("regex", llguidance.LLMatcher.grammar_from_regex(response_format.regex))
        field = "response_format.regex"
    fields = msgspec.to_builtins(response_format)
    if "json_schema" in fields:  # unset options stay unset: some servers refuse explicit nulls
        fields["json_schema"] = {k: v for k, v in fields["json_schema"].items() if v is not None}
    upstream = msgspec.json.encode({"response_format": fields}).decode()
    return dataclasses.replace(grammar, upstream=upstream), field


def json_grammar(schema: dict[str, Any]) -> Grammar:
    """A JSON schema's grammar, checked (for tests and tools that build one by hand)."""
    grammar = response_grammar(req.JsonSchemaFormat(json_schema=req.JsonSchemaSpec(name="schema", schema=schema)))
    assert grammar is not None
    return grammar


def checked(grammar: Grammar, field: str, limits: GrammarLimits = DEFAULT_LIMITS, check: Checker = validate) -> Grammar:
    """The grammar once llguidance has accepted it within `limits` (cached by source)."""
    key = source_key(grammar)
    outcome = CHECKED.get(key)
    if outcome is None:
        outcome = compile_source(grammar, field, limits, check)
        CHECKED.put(key, outcome)
    return settled(outcome)


def compile_source(grammar: Grammar, field: str, limits: GrammarLimits, check: Checker) -> Grammar | GatewayError:
    size = len(grammar.source.encode())
    if size > limits.max_bytes:
        message = f"{field}: the grammar is {size} bytes; max_grammar_bytes is {limits.max_bytes}"
        return GatewayError(ErrorCode.INVALID_FIELD, message)
    problem = check(grammar.source, limits)
    return limits.refusal(field, problem) if problem else grammar
