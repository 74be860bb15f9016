"""One place resolves a turn's sampling: turn over session over server defaults, bounded by the limit."""

from __future__ import annotations

import pytest

from gateway.config import Settings
from gateway.core.request import JsonObjectFormat, SamplingOptions, TextFormat
from gateway.core.sampling import resolve_params, server_defaults
from gateway.engine.contract import SamplingParams
from gateway.errors import ErrorCode, GatewayError


def test_server_defaults_come_from_the_settings() -> None:
    """The server's layer is the settings' defaults; ignore_eos is off unless a turn asks."""
    settings = Settings(default_temperature=0.3, default_top_p=0.9, default_top_k=7, default_max_tokens=33)
    defaults = server_defaults(settings)
    assert (defaults.temperature, defaults.top_p, defaults.top_k, defaults.max_tokens) == (0.3, 0.9, 7, 33)
    assert defaults.ignore_eos is False


def test_resolve_params_uses_builtin_defaults_when_nothing_is_set() -> None:
    """With no options anywhere, parameters are the built-in ones and max_tokens is the limit."""
    params = resolve_params(SamplingOptions(), SamplingOptions(), None, 256)
    assert params == SamplingParams(max_tokens=256)


def test_resolve_params_session_overrides_server() -> None:
    """A session default beats the server default for the same option."""
    params = resolve_params(SamplingOptions(temperature=0.9, top_p=0.8), SamplingOptions(temperature=0.1), None, 64)
    assert (params.temperature, params.top_p) == (0.1, 0.8)


def test_resolve_params_turn_overrides_session_and_server() -> None:
    """A per-turn option beats both the session and the server default."""
    params = resolve_params(
        SamplingOptions(temperature=0.9, top_k=1),
        SamplingOptions(temperature=0.5, seed=1),
        SamplingOptions(temperature=0.0),
        64,
    )
    assert (params.temperature, params.top_k, params.seed) == (0.0, 1, 1)


def test_resolve_params_converts_stop_to_a_tuple() -> None:
    """Stop strings come out as a tuple in the order given."""
    params = resolve_params(SamplingOptions(), SamplingOptions(stop=["a", "b"]), None, 64)
    assert params.stop == ("a", "b")


def test_resolve_params_max_tokens_at_the_limit_is_allowed() -> None:
    """max_tokens equal to the limit is accepted."""
    assert resolve_params(SamplingOptions(), SamplingOptions(), SamplingOptions(max_tokens=64), 64).max_tokens == 64


def test_resolve_params_max_tokens_above_the_limit_is_invalid_field() -> None:
    """max_tokens above the server's limit, from any layer, is refused as invalid_field."""
    for layers in [
        (SamplingOptions(), SamplingOptions(), SamplingOptions(max_tokens=65)),
        (SamplingOptions(), SamplingOptions(max_tokens=65), None),
    ]:
        with pytest.raises(GatewayError) as info:
            resolve_params(*layers, 64)
        assert info.value.code is ErrorCode.INVALID_FIELD


def test_text_response_format_adds_no_grammar() -> None:
    """`{"type": "text"}` is free text: the reply is not constrained."""
    assert resolve_params(SamplingOptions(), SamplingOptions(), SamplingOptions(response_format=TextFormat()), 64).grammar is None


def test_json_object_response_format_becomes_a_grammar() -> None:
    """`json_object` reaches the engine as a json_object grammar on the parameters."""
    params = resolve_params(SamplingOptions(), SamplingOptions(), SamplingOptions(response_format=JsonObjectFormat()), 64)
    assert params.grammar is not None and params.grammar.kind == "json_object"


def test_a_session_response_format_applies_to_its_turns() -> None:
    """A response_format set as a session default constrains a turn that names none."""
    params = resolve_params(SamplingOptions(), SamplingOptions(response_format=JsonObjectFormat()), SamplingOptions(), 64)
    assert params.grammar is not None
