"""One place resolves a turn's sampling: its options over the session's defaults over the server's, within the limits."""

from __future__ import annotations

from typing import Any

from gateway.config import Settings
from gateway.core.request import SamplingOptions
from gateway.core.structured import response_grammar
from gateway.engine.contract import SamplingParams
from gateway.errors import ErrorCode, GatewayError

OPTION_FIELDS = SamplingOptions.__struct_fields__


def server_defaults(settings: Settings) -> SamplingOptions:
    return SamplingOptions(
        temperature=settings.default_temperature,
        top_p=settings.default_top_p,
        top_k=settings.default_top_k,
        max_tokens=settings.default_max_tokens,
        repetition_penalty=settings.default_repetition_penalty,
        ignore_eos=False,
    )


def resolve_params(
    server: SamplingOptions, session: SamplingOptions, turn: SamplingOptions | None, max_tokens_limit: int
) -> SamplingParams:
    """Per-turn options over session defaults over server defaults, checked against the limits."""
    layers = [server, session] + ([turn] if turn is not None else [])
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: getattr(layer, k) for k in OPTION_FIELDS if getattr(layer, k) is not None})
    max_tokens = int(merged.get("max_tokens", max_tokens_limit))
    if max_tokens > max_tokens_limit:
        raise GatewayError(ErrorCode.INVALID_FIELD, f"max_tokens {max_tokens} is above the limit of {max_tokens_limit}")
    stop = tuple(merged.get("stop") or ())
    return SamplingParams(
        temperature=float(merged.get("temperature", 1.0)),
        top_p=float(merged.get("top_p", 1.0)),
        top_k=int(merged.get("top_k", 0)),
        max_tokens=max_tokens,
        repetition_penalty=float(merged.get("repetition_penalty", 1.0)),
        stop=stop,
        seed=merged.get("seed"),
        ignore_eos=bool(merged.get("ignore_eos", False)),
        grammar=response_grammar(merged.get("response_format")),
    )
