"""The optional API key: a Bearer header for HTTP, and for browsers (which cannot set WebSocket
headers) a `bearer.<key>` subprotocol, which keeps the key out of URLs and access logs."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

BEARER_SUBPROTOCOL_PREFIX = "bearer."


def bearer_accepted(authorization: str | None, api_key: str | None) -> bool:
    """True when no key is configured, or the `Authorization: Bearer <key>` value carries it."""
    if not api_key:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and _same(token.strip(), api_key)


def websocket_accepted(authorization: str | None, subprotocols: Iterable[str], api_key: str | None) -> bool:
    """A WebSocket handshake carries the key in an Authorization header or a `bearer.<key>` subprotocol."""
    if bearer_accepted(authorization, api_key):
        return True
    offered = [p[len(BEARER_SUBPROTOCOL_PREFIX) :] for p in subprotocols if p.startswith(BEARER_SUBPROTOCOL_PREFIX)]
    return any(_same(token, api_key or "") for token in offered)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def offered_credentials(authorization: str | None, subprotocols: Iterable[str]) -> list[str]:
    """Every credential a handshake carries: the Bearer header's and each `bearer.` subprotocol's."""
    scheme, _, token = (authorization or "").partition(" ")
    header = [token.strip()] if scheme.lower() == "bearer" and token.strip() else []
    return header + [p[len(BEARER_SUBPROTOCOL_PREFIX) :] for p in subprotocols if p.startswith(BEARER_SUBPROTOCOL_PREFIX)]
