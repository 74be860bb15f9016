"""The `Host` names the gateway answers for: a browser page on a rebound DNS name must not reach it."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class HostPolicy:
    """Names allowed in `Host` (lower case, no port). An IP address always passes: DNS rebinding
    needs a name the attacker controls, and the browser sends that name, never the address."""

    names: frozenset[str]
    any_host: bool = False

    def allows(self, host: str | None) -> bool:
        """Whether a `Host` header value (`name`, `name:port`, `[v6]:port`) is one to answer."""
        name = host_name(host or "")
        if self.any_host or name in self.names:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


@functools.lru_cache(maxsize=16)
def host_policy(settings: Settings) -> HostPolicy:
    """`allowed_hosts` read as a policy: "*" allows any; empty means the loopback names and the bound host."""
    listed = {host_name(item) for item in settings.allowed_hosts.split(",") if item.strip()}
    if "*" in listed:
        return HostPolicy(frozenset(), any_host=True)
    return HostPolicy(frozenset(listed or {*LOOPBACK_NAMES, host_name(settings.host)}))


def origin_allowed(origin: str, host: str | None, settings: Settings) -> bool:
    """A browser page may open /ws when its origin is on `allowed_origins`, or is the server's own host
    and that host is one the server answers for (after DNS rebinding, an attacker's page is same-origin
    with its own name). The handshake and /status both ask this."""
    allowed = {o.strip().rstrip("/") for o in settings.allowed_origins.split(",") if o.strip()}
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    netloc = urlsplit(origin).netloc
    return netloc == host and host_policy(settings).allows(netloc)


def host_name(host: str) -> str:
    """The name in a `Host` value or origin netloc, lower case, without port, brackets or final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") > 1:  # a bare IPv6 address, as `allowed_hosts` may list it
        return host
    return host.partition(":")[0].rstrip(".")


class HostGuard:
    """ASGI middleware: HTTP requests and WebSocket handshakes for a name not allowed get 400."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.policy.allows(Headers(scope=scope).get("host")):
            refusal = PlainTextResponse("this server does not answer for that host name (see allowed_hosts)", 400)
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)
