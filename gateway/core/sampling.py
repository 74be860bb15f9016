"""One place resolves a turn's sampling: its options over the session's defaults over the server's, within the limits."""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.config import Settings
from gateway.core.request import SamplingOptions
from gateway.core.structured import response_grammar
from gateway.engine.contract import SamplingParams
from gateway.errors import ErrorCode, GatewayError

OPTION_FIELDS = SamplingOptions.__struct_fields__
PARAM_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams)) - {"max_tokens", "stop", "grammar"}


SERVER_DEFAULTED = ("temperature", "top_p", "top_k", "max_tokens", "repetition_penalty")  # Settings.default_<name>


def server_defaults(settings: Settings) -> SamplingOptions:
    """The options a turn gets for what neither it nor its session sets."""
    return SamplingOptions(ignore_eos=False, **{name: getattr(settings, f"default_{name}") for name in SERVER_DEFAULTED})


def resolve_params(
    server: SamplingOptions, session: SamplingOptions, turn: SamplingOptions | None, max_tokens_limit: int
) -> SamplingParams:
    """Per-turn options over session defaults over server defaults, checked against the limits. An option the
    engine takes under the same name passes through as it is (a new sampling option needs no line here); only
    the options that change shape on the way are named below."""
    layers = [server, session] + ([turn] if turn is not None else [])
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: getattr(layer, k) for k in OPTION_FIELDS if getattr(layer, k) is not None})
    max_tokens = int(merged.get("max_tokens", max_tokens_limit))
    if max_tokens > max_tokens_limit:
        message = f"max_tokens {max_tokens} is above the limit of {max_tokens_limit}"
        raise GatewayError(ErrorCode.INVALID_FIELD, message, field="max_tokens")
    same = {k: v for k, v in merged.items() if k in PARAM_FIELDS}
    return SamplingParams(
        **same,
        max_tokens=max_tokens,
        stop=tuple(merged.get("stop") or ()),
        grammar=response_grammar(merged.get("response_format")),
    )
