"""Scoped tokens: a signed, short-lived, restricted stand-in for the API key that a browser may hold."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

import msgspec

PREFIX = "gw1."  # the format's version: a token of another shape is refused as malformed
MAX_TOKEN_CHARS = 2048  # a bound on what is decoded at all; a real token is a few hundred characters


class TokenClaims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a token allows, and until when it may open a connection."""

    id: str  # single use is claimed by this id
    issued_at: float  # unix seconds
    expires_at: float  # the last moment it may open a connection
    session_s: float  # how long a connection it opened may last
    single_use: bool = True
    model: str | None = None  # turns may use only this model id
    session: str | None = None  # only a `resume` of this session; no fresh one
    max_tokens: int | None = None  # a turn's max_tokens is capped to this
    tools: bool = True  # whether turns may offer tools
    turns: int | None = None  # turns the connection may start, all together


class TokenRefused(Exception):
    """A token that opens nothing; `reason` is one of `malformed`, `bad_signature`, `expired`."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"token refused: {reason}")
        self.reason = reason


class TokenKeys:
    """The signing secret, and the previous one while tokens it signed may still be in use: after a
    rotation a token minted just before it keeps working until it expires, and no longer than
    `previous_until` (the server's start plus the longest a token may wait to open)."""

    def __init__(self, secret: str, previous: str | None = None, previous_until: float = 0.0) -> None:
        if not secret:
            raise ValueError("a token secret must not be empty")
        self.secret = secret.encode()
        self.previous = previous.encode() if previous else None
        self.previous_until = previous_until

    def verifying(self, now: float) -> list[bytes]:
        """The secrets a signature may be made with at `now`, the current one first."""
        keep_previous = self.previous is not None and now <= self.previous_until
        return [self.secret, self.previous] if keep_previous and self.previous else [self.secret]


def keys_of(secret: str | None, previous: str | None, started_at: float, max_ttl_s: float) -> TokenKeys | None:
    """A server's keys, None when tokens are off; a previous secret counts for one longest TTL after start."""
    return TokenKeys(secret, previous, started_at + max_ttl_s) if secret else None


def new_token_id() -> str:
    """A random id for a token's claims: what single use is claimed by."""
    return secrets.token_urlsafe(12)


def mint(claims: TokenClaims, keys: TokenKeys) -> str:
    """`gw1.<payload>.<mac>`: the claims as compact JSON and an HMAC-SHA256 over the prefix and payload,
    both base64url without padding."""
    signed = PREFIX + _b64encode(msgspec.json.encode(claims))
    return f"{signed}.{_b64encode(_mac(keys.secret, signed))}"


def verify(token: str, keys: TokenKeys, now: float) -> TokenClaims:
    """The claims of a token signed with a secret in use that may still open a connection at `now`;
    raises `TokenRefused` otherwise. The signature is checked before the payload is decoded."""
    signed, mac = _split(token)
    if not any(hmac.compare_digest(_mac(secret, signed), mac) for secret in keys.verifying(now)):
        raise TokenRefused("bad_signature")
    try:
        claims = msgspec.json.decode(_b64decode(signed[len(PREFIX) :]), type=TokenClaims)
    except (msgspec.DecodeError, ValueError) as exc:
        raise TokenRefused("malformed") from exc
    if now > claims.expires_at:
        raise TokenRefused("expired")
    return claims


def is_token(credential: str) -> bool:
    """Whether a credential has a token's shape (a key never starts so, see `mint`)."""
    return credential.startswith(PREFIX)


def _split(token: str) -> tuple[str, bytes]:
    if len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX) or token.count(".") != 2:
        raise TokenRefused("malformed")
    signed, _, mac = token.rpartition(".")
    try:
        return signed, _b64decode(mac)
    except ValueError as exc:
        raise TokenRefused("malformed") from exc


def _mac(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, signed.encode(), hashlib.sha256).digest()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not base64url") from exc
