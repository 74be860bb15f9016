"""Which URLs the gateway may fetch: the fetch policy, and the SSRF guard that checks every address."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import urlsplit

from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError

# Wire codes for errors.py's ErrorCode; until it lists them, these errors travel as `bad_image`.
FORBIDDEN_URL = "forbidden_url"  # a scheme, credentials or address the guard refuses
FETCH_FAILED = "fetch_failed"  # unreachable, timed out, an HTTP error status, too many redirects
BAD_IMAGE = ErrorCode.BAD_IMAGE.value  # not an image
TOO_LARGE = ErrorCode.TOO_LARGE.value  # over the byte cap

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix; the IPv4 address is the last 32 bits


class FetchError(GatewayError):
    """A URL the gateway would not or could not fetch; `reason` is the wire code it stands for."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(_error_code(reason), message)
        self.reason = reason


def _error_code(reason: str) -> ErrorCode:
    try:
        return ErrorCode(reason)
    except ValueError:
        return ErrorCode.BAD_IMAGE


@dataclass(frozen=True)
class FetchPolicy:
    """How far the gateway goes to fetch an image a client named by URL."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0  # for each read from the socket
    total_timeout_s: float = 20.0  # for the whole fetch, redirects included, however fast bytes trickle in
    max_bytes: int = 8 * 1024 * 1024
    max_redirects: int = 3
    allow: tuple[str, ...] = ()  # CIDR networks or host names admitted past the guard (internal image stores)
    ca_bundle: str | None = None  # a PEM file of CAs to trust instead of certifi's

    @cached_property
    def allowed_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(n for entry in self.allow if (n := _as_network(entry)) is not None)

    @cached_property
    def allowed_hosts(self) -> frozenset[str]:
        return frozenset(_host_key(entry) for entry in self.allow if _as_network(entry) is None)

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        """The policy the settings describe; the byte cap is the attachment cap."""
        return cls(
            connect_timeout_s=settings.image_fetch_connect_timeout_s,
            read_timeout_s=settings.image_fetch_read_timeout_s,
            total_timeout_s=settings.image_fetch_total_timeout_s,
            max_bytes=settings.max_image_bytes,
            max_redirects=settings.image_fetch_max_redirects,
            allow=parse_allow_list(settings.image_fetch_allow),
        )


def parse_allow_list(text: str) -> tuple[str, ...]:
    """Split a comma-separated allow-list ("10.0.0.0/8, images.internal") into its entries."""
    return tuple(entry.strip() for entry in text.split(",") if entry.strip())


def _as_network(entry: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(entry.strip().replace("[", "").replace("]", ""), strict=False)
    except ValueError:
        return None


def _host_key(host: str) -> str:
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True)
class Target:
    """One hop that passed the guard: the URL and the checked addresses the connection is pinned to."""

    url: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def is_public(address: IPAddress) -> bool:
    """True for a globally routable unicast address; an IPv6 wrapper is judged by the IPv4 inside it."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or (_nat64_inner(address) if address in _NAT64 else None)
        if inner is not None:
            return is_public(inner)
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False
        if address.is_site_local:
            return False
    flags = (
        address.is_loopback,
        address.is_private,
        address.is_link_local,
        address.is_multicast,
        address.is_reserved,
        address.is_unspecified,
    )
    return address.is_global and not any(flags)


def _nat64_inner(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def is_admitted(address: IPAddress, policy: FetchPolicy) -> bool:
    """Public, or inside a network the operator allow-listed (an IPv4-mapped form counts as its IPv4)."""
    forms: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        forms.append(address.ipv4_mapped)
    if any(form in network for form in forms for network in policy.allowed_networks):
        return True
    return is_public(address)


def resolve_host(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address the host resolves to; getaddrinfo also reads the odd IPv4 spellings (2130706433, 127.1)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise FetchError(FETCH_FAILED, "the image URL's host could not be resolved") from None
    addresses = dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    return tuple(addresses)


def check_url(url: str, policy: FetchPolicy) -> Target:
    """Refuse what the guard forbids; otherwise the hop to make, pinned to the addresses just checked."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise FetchError(FORBIDDEN_URL, "image URLs must be http or https (or data: URIs)")
    if parts.username is not None or parts.password is not None:
        raise FetchError(FORBIDDEN_URL, "image URLs may not carry credentials")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise FetchError(FORBIDDEN_URL, "the image URL's port is not valid") from None
    host = parts.hostname
    if not host:
        raise FetchError(FORBIDDEN_URL, "the image URL names no host")
    addresses = resolve_host(host, port)
    host_allowed = _host_key(host) in policy.allowed_hosts
    if not host_allowed and not all(is_admitted(a, policy) for a in addresses):
        # The address stays out of the message: it would map the operator's internal network.
        raise FetchError(FORBIDDEN_URL, "the image URL points at a private or reserved address")
    return Target(url=url, host=host, port=port, addresses=addresses)
