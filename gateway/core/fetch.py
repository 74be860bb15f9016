"""Image and video URL fetching: each hop guarded and pinned to its checked addresses; bytes and time capped as it streams."""

from __future__ import annotations

import base64
import binascii
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

from gateway.core.url_guard import BAD_IMAGE, FETCH_FAILED, TOO_LARGE, FetchError, FetchPolicy, Target, check_url
from gateway.errors import ErrorCode

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 64 * 1024
_MAGIC_BYTES = 12  # enough to tell JPEG, PNG, GIF and WebP apart, and MP4, WebM and GIF


def _is_image(head: bytes) -> bool:
    return (
        head.startswith(b"\xff\xd8\xff")
        or head.startswith(b"\x89PNG\r\n\x1a\n")
        or head[:6] in (b"GIF87a", b"GIF89a")
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    )


def _is_video(head: bytes) -> bool:
    """The containers gateway.media.video demuxes: ISO base media (MP4), EBML (WebM) and GIF."""
    return head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3" or head[:6] in (b"GIF87a", b"GIF89a")


@dataclass(frozen=True)
class MediaKind:
    """What a URL must serve: its media types (application/octet-stream aside), its magic bytes, its error code."""

    noun: str
    media_types: tuple[str, ...]  # prefixes of the Content-Type accepted
    magic: Callable[[bytes], bool]
    described: str
    bad: str  # the wire code for content of another kind


IMAGE = MediaKind("image", ("image/",), _is_image, "a JPEG, PNG, WebP or GIF image", BAD_IMAGE)
VIDEO = MediaKind("video", ("video/", "image/gif"), _is_video, "an MP4, WebM or GIF video", ErrorCode.BAD_VIDEO.value)


def fetch_image_bytes(url: str, policy: FetchPolicy, kind: MediaKind = IMAGE) -> bytes:
    """GET an image (or a video, by `kind`) by http(s) URL within the policy, following redirects one checked
    hop at a time. Blocking: run it with asyncio.to_thread."""
    with _Deadline(policy.total_timeout_s) as deadline:
        for _ in range(policy.max_redirects + 1):
            target = check_url(url, policy)
            try:
                with _open(target, policy, deadline, kind) as response:
                    if response.status_code not in _REDIRECT_STATUSES:
                        _check_headers(response, policy, kind)
                        return _read_body(response, policy, deadline, kind)
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


def data_url_bytes(url: str, max_bytes: int, kind: MediaKind = IMAGE) -> bytes:
    """Decode `data:image/<type>;base64,<payload>` (the type is checked properly by decode_image), or a video's
    `data:video/<type>;...` by `kind`."""
    header, comma, payload = url[5:].partition(",")
    media_type, *flags = header.split(";")
    if not comma or not media_type.strip().lower().startswith(kind.media_types):
        raise FetchError(kind.bad, f"a data: URI must hold an {kind.noun} media type ({', '.join(kind.media_types)})")
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


def _open(target: Target, policy: FetchPolicy, deadline: _Deadline, kind: MediaKind) -> requests.Response:
    session = requests.Session()
    session.trust_env = False  # no proxies (they would dodge the pinning) and no .netrc credentials
    adapter = _PinnedAdapter(target, deadline)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    connect_s = max(0.01, min(policy.connect_timeout_s, deadline.remaining()))
    accept = ", ".join(f"{t}*" if t.endswith("/") else t for t in kind.media_types)
    headers = {"Accept": accept, "Accept-Encoding": "identity", "User-Agent": "gateway-image-fetch"}
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


def _check_headers(response: requests.Response, policy: FetchPolicy, kind: MediaKind) -> None:
    if not 200 <= response.status_code < 300:
        raise FetchError(FETCH_FAILED, f"the image URL answered HTTP {response.status_code}")
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > policy.max_bytes:
        raise _too_large(policy.max_bytes)
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type and not media_type.startswith(kind.media_types) and media_type != "application/octet-stream":
        raise FetchError(kind.bad, f"the {kind.noun} URL served {media_type[:64]}, not an {kind.noun}")


def _read_body(response: requests.Response, policy: FetchPolicy, deadline: _Deadline, kind: MediaKind) -> bytes:
    body = bytearray()
    for chunk in response.iter_content(_CHUNK_BYTES):
        deadline.check()
        body += chunk
        if len(body) > policy.max_bytes:
            raise _too_large(policy.max_bytes)
        if len(body) - len(chunk) < _MAGIC_BYTES <= len(body):
            _check_magic(bytes(body[:_MAGIC_BYTES]), kind)
    deadline.check()  # a body cut short by the deadline can look like a clean end
    _check_magic(bytes(body[:_MAGIC_BYTES]), kind)
    return bytes(body)


def _check_magic(head: bytes, kind: MediaKind) -> None:
    if not kind.magic(head):
        raise FetchError(kind.bad, f"the {kind.noun} URL's content is not {kind.described}")


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
        timed_out = False
        for address in self.target.addresses:  # the checked port too, whatever requests parsed
            timeout = self.deadline.remaining()  # the deadline's timer watches sockets only once they exist
            if isinstance(self.timeout, (int, float)):
                timeout = min(timeout, self.timeout)
            if timeout <= 0:
                break
            try:
                sock = create_connection((str(address), self.target.port), timeout, None, self.socket_options)
            except OSError as exc:
                timed_out = timed_out or isinstance(exc, socket.timeout)
                continue
            self.deadline.watch(sock)
            return sock
        if timed_out or self.deadline.remaining() <= 0:
            raise ConnectTimeoutError(self, "connecting to the image host timed out")
        raise NewConnectionError(self, "could not connect to the image host")
