"""`POST /v1/realtime/tokens`: what a backend holding the API key asks for, and the scoped token it answers."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from gateway.config import Settings
from gateway.edge.tokens import TokenClaims, TokenKeys, mint, new_token_id
from gateway.openai.errors import ApiError

MAX_BODY_BYTES = 4096  # a few options; nothing here is large

Seconds = Annotated[float, Meta(gt=0)]


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body: every field optional; unknown fields are refused. Bounds past the schema's are settings."""

    ttl_s: Seconds | None = None  # time to open; default token_ttl_s, at most token_max_ttl_s
    session_s: Seconds | None = None  # the connection's longest life; default token_session_s, at most token_max_session_s
    single_use: bool = True
    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    session: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    tools: bool = True
    turns: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None


def minted(body: bytes, settings: Settings, served: list[str], now: float) -> dict[str, object]:
    """The answer to a request for a token: the token, its id, when it stops opening, and its session's length."""
    if not settings.token_secret:
        raise ApiError(404, "scoped tokens are off: the server has no token_secret", code="tokens_disabled")
    keys = TokenKeys(settings.token_secret)  # minting uses only the current secret
    try:
        asked = msgspec.json.decode(body or b"{}", type=TokenRequest)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid token request: {exc}", code="invalid_field") from None
    except msgspec.DecodeError:
        raise ApiError(400, "the body must be a JSON object", code="bad_frame") from None
    ttl_s = _bounded(asked.ttl_s, settings.token_ttl_s, settings.token_max_ttl_s, "ttl_s")
    session_s = _bounded(asked.session_s, settings.token_session_s, settings.token_max_session_s, "session_s")
    if asked.max_tokens is not None and asked.max_tokens > settings.max_tokens_limit:
        raise ApiError(
            400, f"max_tokens is over max_tokens_limit ({settings.max_tokens_limit})", code="invalid_field", param="max_tokens"
        )
    if asked.model is not None and asked.model not in served:
        raise ApiError(400, f"model {asked.model!r} is not served here", code="model_not_found", param="model")
    scope = {f: getattr(asked, f) for f in ("single_use", "model", "session", "max_tokens", "tools", "turns")}
    claims = TokenClaims(id=new_token_id(), issued_at=now, expires_at=now + ttl_s, session_s=session_s, **scope)
    return {"token": mint(claims, keys), "id": claims.id, "expires_at": claims.expires_at, "session_s": session_s}


def _bounded(asked: float | None, default: float, limit: float, name: str) -> float:
    if asked is not None and asked > limit:
        raise ApiError(400, f"{name} is over the server's limit of {limit:g} s", code="invalid_field", param=name)
    return asked if asked is not None else min(default, limit)
