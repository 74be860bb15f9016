"""Scoped tokens without a server: what verifies, and each way a token is refused."""

from __future__ import annotations

import pytest

from gateway.edge.tokens import TokenClaims, TokenKeys, TokenRefused, is_token, mint, new_token_id, verify

NOW = 1_800_000_000.0
KEYS = TokenKeys("the-secret")


def claims(ttl_s: float = 60.0, **scope: object) -> TokenClaims:
    return TokenClaims(id=new_token_id(), issued_at=NOW, expires_at=NOW + ttl_s, session_s=1800.0, **scope)  # type: ignore[arg-type]


def refusal(token: str, keys: TokenKeys = KEYS, now: float = NOW) -> str:
    with pytest.raises(TokenRefused) as refused:
        verify(token, keys, now)
    return refused.value.reason


def test_a_minted_token_verifies_to_its_claims() -> None:
    """Every restriction a token was minted with comes back from it unchanged."""
    minted = claims(model="gateway-demo", session="s1", max_tokens=32, tools=False, turns=3, single_use=False)
    token = mint(minted, KEYS)
    assert is_token(token) and token.count(".") == 2
    assert verify(token, KEYS, NOW + 59) == minted


def test_an_expired_token_is_refused() -> None:
    """Past its time to open, a token is refused as expired, signature and all intact."""
    assert refusal(mint(claims(ttl_s=60), KEYS), now=NOW + 61) == "expired"


def test_a_forged_payload_is_refused() -> None:
    """A payload changed after signing (a longer expiry, another model) fails the signature."""
    token = mint(claims(model="small"), KEYS)
    prefix, _payload, mac = token.split(".")
    forged_payload = mint(claims(ttl_s=10**9, model="big"), KEYS).split(".")[1]
    assert refusal(f"{prefix}.{forged_payload}.{mac}") == "bad_signature"


def test_a_token_signed_with_another_secret_is_refused() -> None:
    """A token from a server with a different secret is a bad signature here."""
    assert refusal(mint(claims(), TokenKeys("someone-else"))) == "bad_signature"


def test_a_rotated_secret_verifies_until_its_window_ends() -> None:
    """After a rotation the previous secret's tokens verify, but only until `previous_until`."""
    old = mint(claims(ttl_s=600), TokenKeys("old-secret"))
    rotated = TokenKeys("new-secret", previous="old-secret", previous_until=NOW + 60)
    assert verify(old, rotated, NOW + 30).id
    assert refusal(old, rotated, now=NOW + 61) == "bad_signature"
    assert verify(mint(claims(ttl_s=600), rotated), rotated, NOW + 61).id  # new tokens use the new secret


@pytest.mark.parametrize(
    "token",
    ["", "gw1.", "gw1..", "gw2.e30.AAAA", "gw1.e30", "gw1.a.b.c", "not a token", "gw1.e30.!!!", "gw1." + "A" * 5000 + ".A"],
)
def test_a_malformed_token_is_refused(token: str) -> None:
    """Anything not shaped as a token is refused as malformed or unsigned, never an exception of another kind."""
    assert refusal(token) in {"malformed", "bad_signature"}


def test_a_signed_payload_of_the_wrong_shape_is_malformed() -> None:
    """A correctly signed payload that is not the claims (an unknown field, not JSON) is malformed."""
    import base64
    import hashlib
    import hmac

    for payload in (b'{"id":"x","unknown":1}', b"not json"):
        signed = "gw1." + base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
        mac = hmac.new(b"the-secret", signed.encode(), hashlib.sha256).digest()
        token = f"{signed}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
        assert refusal(token) == "malformed"


def test_an_empty_secret_is_refused_at_start() -> None:
    """No token is ever signed with an empty secret."""
    with pytest.raises(ValueError):
        TokenKeys("")
