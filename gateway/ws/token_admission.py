"""A scoped token at the WebSocket handshake: verified, then claimed once in the shared store if single use."""

from __future__ import annotations

import logging
import time

from gateway.core.store.guard import StoreUnavailable
from gateway.edge.auth import offered_credentials
from gateway.edge.tokens import TokenClaims, TokenKeys, TokenRefused, is_token, verify
from gateway.ws.hub import SessionHub

log = logging.getLogger("gateway.ws.tokens")


class TokenDenied(Exception):
    """The handshake's token opens nothing: `status` is the HTTP answer, `reason` its body (never the token)."""

    def __init__(self, status: int, reason: str, cause: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.cause = cause  # the metric's label: malformed, bad_signature, expired, used, off, store_unavailable


def offered_token(authorization: str | None, subprotocols: list[str]) -> str | None:
    """The first credential of a token's shape the handshake carries, if any."""
    return next((c for c in offered_credentials(authorization, subprotocols) if is_token(c)), None)


def verified(token: str, keys: TokenKeys | None) -> TokenClaims:
    """The token's claims, or `TokenDenied` (401) saying why; nothing of the token itself is logged."""
    if keys is None:
        raise TokenDenied(401, "unauthorized", "off")
    try:
        return verify(token, keys, time.time())
    except TokenRefused as exc:
        log.info("a scoped token was refused: %s", exc.reason)
        raise TokenDenied(401, f"token {exc.reason}", exc.reason) from None


async def claimed(claims: TokenClaims, hub: SessionHub) -> None:
    """A single-use token's id claimed until it expires, on every gateway sharing the store; a second use is
    refused (401), and so is any while the store cannot answer (503), since single use could not be promised."""
    if not claims.single_use:
        return
    try:
        first = await hub.guard.call(hub.store.claim, claims.id, time.time(), claims.expires_at)
    except StoreUnavailable:
        raise TokenDenied(503, "store_unavailable", "store_unavailable") from None
    if not first:
        log.info("a single-use token was offered again (id %s)", claims.id)
        raise TokenDenied(401, "token used", "used")
