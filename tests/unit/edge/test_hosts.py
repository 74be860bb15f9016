"""The Host allow-list and the origin check on their own: which names pass, with no server."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.websockets import WebSocket

from gateway.config import Settings
from gateway.edge.hosts import host_policy
from gateway.ws.endpoint import _origin_allowed

REBOUND = "rebind.attacker.example"


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8000", "LOCALHOST.:8000", "127.0.0.1:8000", "[::1]:8000", "[::1]", "10.1.2.3:80", "[fe80::1]"],
)
def test_default_policy_allows_loopback_names_and_addresses(host: str) -> None:
    """By default the loopback names and any IP address pass (rebinding needs a name)."""
    assert host_policy(Settings()).allows(host)


@pytest.mark.parametrize("host", [f"{REBOUND}:8000", REBOUND, "localhost.attacker.example", "", None, "127.0.0.1.nip.io"])
def test_default_policy_refuses_other_names(host: str | None) -> None:
    """Any other name, or no Host at all, is refused."""
    assert not host_policy(Settings()).allows(host)


def test_listed_names_and_the_bound_host() -> None:
    """`allowed_hosts` replaces the defaults; the bound host name is allowed by default; `*` allows any."""
    assert host_policy(Settings(host="gpu-box.lan")).allows("gpu-box.lan:8000")
    listed = host_policy(Settings(allowed_hosts="chat.example.com, Other.Example"))
    assert listed.allows("chat.example.com") and listed.allows("other.example:443") and not listed.allows("localhost")
    assert host_policy(Settings(allowed_hosts="*")).allows(f"{REBOUND}:1")


def origin_allowed(host: str, origin: str, settings: Settings) -> bool:
    scope = {"type": "websocket", "path": "/ws", "headers": [(b"host", host.encode()), (b"origin", origin.encode())]}
    return _origin_allowed(WebSocket(scope, _never, _never), settings)


async def _never(*args: Any) -> Any:
    raise AssertionError("not used")


def test_same_origin_is_not_enough_without_an_allowed_name() -> None:
    """The origin check itself (not only the Host guard before it) wants an allowed name: a page on a
    rebound name is same-origin with its own Host."""
    attacker = f"{REBOUND}:8000"
    assert not origin_allowed(attacker, f"http://{attacker}", Settings())
    assert origin_allowed("localhost:8000", "http://localhost:8000", Settings())
    assert origin_allowed(attacker, f"http://{attacker}", Settings(allowed_hosts="*"))  # the operator opted out
