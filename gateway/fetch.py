"""Image URL fetching behind an SSRF guard: each hop's addresses checked and pinned, bytes and time capped."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

from gateway.errors import ErrorCode, GatewayError

# Wire codes for errors.py's ErrorCode; until it lists them, these errors travel as `bad_image`.
FORBIDDEN_URL = "forbidden_url"  # a scheme, credentials or address the guard refuses
FETCH_FAILED = "fetch_failed"  # unreachable, timed out, an HTTP error status, too many redirects
BAD_IMAGE = ErrorCode.BAD_IMAGE.value  # not an image
TOO_LARGE = ErrorCode.TOO_LARGE.value  # over the byte cap

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK_BYTES = 64 * 1024
_MAGIC_BYTES = 12  # enough to tell JPEG, PNG, GIF and WebP apart
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
    def from_settings(cls, settings: Any) -> FetchPolicy:
        """The policy a Settings describes; fields it does not have yet keep their defaults."""
        defaults = cls()
        return cls(
            connect_timeout_s=getattr(settings, "image_fetch_connect_timeout_s", defaults.connect_timeout_s),
            read_timeout_s=getattr(settings, "image_fetch_read_timeout_s", defaults.read_timeout_s),
            total_timeout_s=getattr(settings, "image_fetch_total_timeout_s", defaults.total_timeout_s),
            max_bytes=getattr(settings, "max_image_bytes", defaults.max_bytes),
            max_redirects=getattr(settings, "image_fetch_max_redirects", defaults.max_redirects),
            allow=parse_allow_list(getattr(settings, "image_fetch_allow", "")),
        )


def parse_allow_list(text: str) -> tuple[str, ...]:
    """Split a comma-separated allow-list ("10.0.0.0/8, images.internal") into its entries."""
    return tuple(entry.strip() for entry in text.split(",") if entry.strip())


def _as_network(entry: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(entry.strip().strip("[]"), strict=False)
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
    addresses: tuple[IPAddress, ...] = field(default=())


# ---- the guard ---------------------------------------------------------------------------------


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


# ---- the fetch ---------------------------------------------------------------------------------


def fetch_image_bytes(url: str, policy: FetchPolicy) -> bytes:
    """GET an image by http(s) URL within the policy, following redirects one checked hop at a time.
    Blocking: run it with asyncio.to_thread."""
    with _Deadline(policy.total_timeout_s) as deadline:
        for _ in range(policy.max_redirects + 1):
            target = check_url(url, policy)
            try:
                with _open(target, policy, deadline) as response:
                    if response.status_code not in _REDIRECT_STATUSES:
                        _check_headers(response, policy)
                        return _read_body(response, policy, deadline)
                    location = response.headers.get("location")
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
                deadline.check()
                raise FetchError(FETCH_FAILED, "the image URL could not be fetched") from None
            if not location:
                raise FetchError(FETCH_FAILED, "the image URL redirected nowhere")
            url = urljoin(url, location)
    raise FetchError(FETCH_FAILED, f"the image URL redirected more than {policy.max_redirects} times")


def image_url_bytes(url: str, policy: FetchPolicy) -> bytes:
    """The bytes behind an image URL as the OpenAI API allows it: a data: URI, or http(s) fetched."""
    if url[:5].lower() == "data:":
        return data_url_bytes(url, policy.max_bytes)
    return fetch_image_bytes(url, policy)


def data_url_bytes(url: str, max_bytes: int) -> bytes:
    """Decode `data:image/<type>;base64,<payload>` (the type is checked properly by decode_image)."""
    header, comma, payload = url[5:].partition(",")
    media_type, *flags = header.split(";")
    if not comma or not media_type.strip().lower().startswith("image/"):
        raise FetchError(BAD_IMAGE, "a data: URI must hold an image/* media type")
    if "base64" not in (f.strip().lower() for f in flags):
        return _capped(unquote_to_bytes(payload), max_bytes)
    if len(payload) * 3 // 4 > max_bytes + 3:  # refuse before decoding
        raise _too_large(max_bytes)
    try:
        return _capped(base64.b64decode(payload, validate=True), max_bytes)
    except binascii.Error:
        raise FetchError(BAD_IMAGE, "the data: URI's base64 payload is not valid") from None


def _capped(data: bytes, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


def _too_large(max_bytes: int) -> FetchError:
    return FetchError(TOO_LARGE, f"the image is over the {max_bytes}-byte limit")


def _open(target: Target, policy: FetchPolicy, deadline: _Deadline) -> requests.Response:
    session = requests.Session()
    session.trust_env = False  # no proxies (they would dodge the pinning) and no .netrc credentials
    adapter = _PinnedAdapter(target, deadline)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    connect_s = max(0.01, min(policy.connect_timeout_s, deadline.remaining()))
    headers = {"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "gateway-image-fetch"}
    try:
        return session.get(
            target.url,
            headers=headers,
            stream=True,
            allow_redirects=False,
            timeout=(connect_s, policy.read_timeout_s),
            verify=policy.ca_bundle or True,
        )
    finally:
        session.close()  # the response keeps its own connection until it is closed


def _check_headers(response: requests.Response, policy: FetchPolicy) -> None:
    if not 200 <= response.status_code < 300:
        raise FetchError(FETCH_FAILED, f"the image URL answered HTTP {response.status_code}")
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > policy.max_bytes:
        raise _too_large(policy.max_bytes)
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type and not media_type.startswith("image/") and media_type != "application/octet-stream":
        raise FetchError(BAD_IMAGE, f"the image URL served {media_type[:64]}, not an image")


def _read_body(response: requests.Response, policy: FetchPolicy, deadline: _Deadline) -> bytes:
    body = bytearray()
    for chunk in response.iter_content(_CHUNK_BYTES):
        deadline.check()
        body += chunk
        if len(body) > policy.max_bytes:
            raise _too_large(policy.max_bytes)
        if len(body) - len(chunk) < _MAGIC_BYTES <= len(body):
            _check_magic(bytes(body[:_MAGIC_BYTES]))
    deadline.check()  # a body cut short by the deadline can look like a clean end
    _check_magic(bytes(body[:_MAGIC_BYTES]))
    return bytes(body)


def _check_magic(head: bytes) -> None:
    known = (
        head.startswith(b"\xff\xd8\xff")
        or head.startswith(b"\x89PNG\r\n\x1a\n")
        or head[:6] in (b"GIF87a", b"GIF89a")
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    )
    if not known:
        raise FetchError(BAD_IMAGE, "the image URL's content is not a JPEG, PNG, WebP or GIF image")


class _Deadline:
    """The whole fetch's time limit. Read timeouts bound each read, not the sum, so when the deadline
    passes a timer shuts the sockets down, cutting off even a server that drips headers a byte at a time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends_at = time.monotonic() + seconds
        self._expired = False
        self._sockets: list[socket.socket] = []  # duplicates, so shutting one down never hits a reused fd
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def remaining(self) -> float:
        return max(0.0, self._ends_at - time.monotonic())

    def check(self) -> None:
        if self._expired or self.remaining() <= 0:
            raise FetchError(FETCH_FAILED, f"fetching the image took longer than {self.seconds:g} s")

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            duplicate = sock.dup()
            self._sockets.append(duplicate)
            if self._expired:
                _shut_down(duplicate)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading; close() alone would not
    except OSError:
        pass


class _PinnedAdapter(HTTPAdapter):
    """Connects only to the target's checked addresses, whatever DNS answers by now (no rebinding);
    Host, SNI and the certificate check keep the URL's name."""

    def __init__(self, target: Target, deadline: _Deadline) -> None:
        self._target = target
        self._deadline = deadline
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        pinning = {"target": self._target, "deadline": self._deadline}
        http = type("PinnedHTTPConnection", (_PinnedConnection, HTTPConnection), pinning)
        https = type("PinnedHTTPSConnection", (_PinnedConnection, HTTPSConnection), pinning)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PinnedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("PinnedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }


class _PinnedConnection(HTTPConnection):
    """Mixed into urllib3's connection classes: `_new_conn` is the one place urllib3 opens a socket."""

    target: Target
    deadline: _Deadline

    def _new_conn(self) -> socket.socket:
        error: OSError | None = None
        for address in self.target.addresses:  # the checked port too, whatever requests parsed
            try:
                sock = create_connection((str(address), self.target.port), self.timeout, None, self.socket_options)
            except OSError as exc:
                error = exc
                continue
            self.deadline.watch(sock)
            return sock
        if isinstance(error, socket.timeout):
            raise ConnectTimeoutError(self, "connecting to the image host timed out")
        raise NewConnectionError(self, "could not connect to the image host")
