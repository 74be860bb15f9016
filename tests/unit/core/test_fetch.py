"""The URL guard and the image fetcher, against tiny scripted HTTP(S) servers on loopback."""

from __future__ import annotations

import base64
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Settings
from gateway.core import url_guard
from gateway.core.fetch import data_url_bytes, fetch_image_bytes, image_url_bytes
from gateway.core.url_guard import (
    BAD_IMAGE,
    FETCH_FAILED,
    FORBIDDEN_URL,
    TOO_LARGE,
    FetchError,
    FetchPolicy,
    check_url,
    is_public,
    parse_allow_list,
)
from gateway.errors import ErrorCode
from tests.conftest import image_bytes

PNG = image_bytes("PNG")
LOOPBACK = FetchPolicy(allow=("127.0.0.0/8",), total_timeout_s=5.0, read_timeout_s=5.0)

Handler = Callable[[BaseHTTPRequestHandler], None]


class LoopbackServer:
    """A scripted HTTP server on a free loopback port in a thread; each path runs one handler."""

    def __init__(self, handlers: dict[str, Handler], tls: ssl.SSLContext | None = None) -> None:
        self.host_headers: list[str] = []
        server = self

        class Scripted(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.host_headers.append(self.headers.get("Host", ""))
                handler = handlers.get(self.path.split("?")[0])
                if handler is None:
                    self.send_error(404)
                else:
                    handler(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler: BaseHTTPRequestHandler, body: bytes, content_type: str = "image/png", length: int | None = None) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    handler.wfile.write(body)


def redirect(location: str) -> Handler:
    def handle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.end_headers()

    return handle


DRIP_BYTES = 400
DRIPPED: dict[str, int] = {}  # by request path and query: the bytes a drip has sent so far


def drip(handler: BaseHTTPRequestHandler, first: bytes) -> None:
    """Send `first`, then one of DRIP_BYTES bytes every 50 ms: each read is quick, the whole takes 20 s."""
    DRIPPED[handler.path] = 0
    try:
        handler.wfile.write(first)
        for _ in range(DRIP_BYTES):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            DRIPPED[handler.path] += 1
            time.sleep(0.05)
    except OSError:
        pass


def drip_body(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.end_headers()
    drip(handler, PNG[:16])


def redirect_to_loopback(handler: BaseHTTPRequestHandler) -> None:
    port = handler.connection.getsockname()[1]
    redirect(f"http://127.0.0.1:{port}/png")(handler)


def stream_forever(handler: BaseHTTPRequestHandler) -> None:
    """An image with no Content-Length that never stops coming (HTTP/1.0: the body ends at close)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.end_headers()
    try:
        handler.wfile.write(PNG)
        for _ in range(1000):
            handler.wfile.write(b"\0" * 65536)
    except OSError:
        pass


def declare_huge(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", str(10**9))
    handler.end_headers()
    handler.wfile.flush()
    time.sleep(LOOPBACK.total_timeout_s + 1)  # no body before the fetch's deadline: waiting for it would fail the fetch


HANDLERS: dict[str, Handler] = {
    "/png": lambda h: send(h, PNG),
    "/octet": lambda h: send(h, PNG, "application/octet-stream"),
    "/html": lambda h: send(h, b"<html>not an image</html>", "text/html"),
    "/liar": lambda h: send(h, b"<html>not an image at all</html>", "image/png"),
    "/huge-declared": declare_huge,
    "/huge-streamed": stream_forever,
    "/drip-body": drip_body,
    "/drip-headers": lambda h: drip(h, b"HTTP/1.0 200 OK\r\nX-Slow: "),
    "/relative": redirect("/png"),
    "/loop": redirect("/loop"),
    "/to-file": redirect("file:///etc/passwd"),
    "/to-loopback": redirect_to_loopback,
}


@pytest.fixture(scope="module")
def loopback() -> Iterator[LoopbackServer]:
    server = LoopbackServer(HANDLERS)
    yield server
    server.close()


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(FetchError) as caught:
        call()
    return caught.value.reason


# ---- the guard ---------------------------------------------------------------------------------

FORBIDDEN_SPELLINGS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:8080/x.png",
    "http://2130706433/",  # decimal
    "http://0177.0.0.1/",  # octal
    "http://017700000001/",
    "http://0x7f.0.0.1/",  # hex
    "http://0x7f000001/",
    "http://127.1/",  # short forms
    "http://0x7f.1/",
    "http://0/",
    "http://0.0.0.0/",
    "http://localhost/",
    "http://LOCALHOST/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated)
    "http://[2002:7f00:1::1]/",  # 6to4 around 127.0.0.1
    "http://[2002:a00:1::]/",  # 6to4 around 10.0.0.1
    "http://[64:ff9b::127.0.0.1]/",  # NAT64 around 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 around 169.254.169.254
    "http://[64:ff9b:1::1]/",  # local-use NAT64
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://192.0.0.1/",
    "http://198.18.0.1/",  # benchmarking
    "http://224.0.0.1/",  # multicast
    "http://239.255.255.250/",
    "http://240.0.0.1/",  # reserved
    "http://255.255.255.255/",
    "http://[fe80::1]/",  # link-local
    "http://[fc00::1]/",  # unique local
    "http://[fd12:3456::1]/",
    "http://[fec0::1]/",  # site-local (deprecated)
    "http://[ff02::1]/",  # multicast
    "https://127.0.0.1/",
]


@pytest.mark.parametrize("url", FORBIDDEN_SPELLINGS)
def test_guard_refuses_internal_addresses_in_every_spelling(url: str) -> None:
    """Loopback, private, link-local, multicast, reserved and wrapped forms are refused however spelt."""
    assert reason_of(lambda: check_url(url, FetchPolicy())) == FORBIDDEN_URL


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_public_addresses_pass(address: str) -> None:
    """Globally routable addresses, and IPv6 wrappers around them, are public."""
    assert is_public(ipaddress.ip_address(address))


def test_public_url_passes_the_guard() -> None:
    """A public IP literal passes and the target is pinned to it."""
    target = check_url("http://8.8.8.8:8080/a.png", FetchPolicy())
    assert target.addresses == (ipaddress.ip_address("8.8.8.8"),)
    assert target.port == 8080


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://8.8.8.8/a.png",
        "gopher://8.8.8.8/",
        "javascript:alert(1)",
        "data:image/png;base64,AA==",
    ],
)
def test_guard_refuses_other_schemes(url: str) -> None:
    """Only http and https reach the network."""
    assert reason_of(lambda: check_url(url, FetchPolicy())) == FORBIDDEN_URL


def test_guard_refuses_credentials_in_urls() -> None:
    """user:password@ in an image URL is refused."""
    assert reason_of(lambda: check_url("http://user:secret@8.8.8.8/a.png", FetchPolicy())) == FORBIDDEN_URL


def test_guard_refuses_a_name_when_any_address_is_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with one public and one private address is refused (either could be the one used)."""
    both = (ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.1.2.3"))
    monkeypatch.setattr(url_guard, "resolve_host", lambda host, port: both)
    assert reason_of(lambda: check_url("http://images.example/a.png", FetchPolicy())) == FORBIDDEN_URL


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "http://2130706433/", "http://127.1/", "http://[::ffff:127.0.0.1]/"])
def test_allow_listed_network_admits_its_addresses(url: str) -> None:
    """An operator's CIDR allow-list admits its addresses in any spelling, IPv4-mapped included."""
    assert check_url(url, FetchPolicy(allow=("127.0.0.0/8",))).addresses


def test_allow_listed_host_name_is_admitted() -> None:
    """An allow-listed host name is admitted whatever it resolves to."""
    assert check_url("http://localhost/a.png", FetchPolicy(allow=("LocalHost",))).host == "localhost"


def test_allow_list_admits_nothing_else() -> None:
    """Allowing one network does not open the others."""
    policy = FetchPolicy(allow=("10.0.0.0/8", "images.internal"))
    assert reason_of(lambda: check_url("http://127.0.0.1/", policy)) == FORBIDDEN_URL
    assert reason_of(lambda: check_url("http://192.168.0.1/", policy)) == FORBIDDEN_URL


def test_unresolvable_host_fails_to_fetch() -> None:
    """A name that does not resolve is a fetch failure, not a guard refusal."""
    assert reason_of(lambda: check_url("http://no-such-host.invalid/a.png", FetchPolicy())) == FETCH_FAILED


def test_policy_reads_settings_and_allow_list() -> None:
    """The policy takes its byte cap from Settings and parses a comma-separated allow-list."""
    assert parse_allow_list(" 10.0.0.0/8, images.internal ,,") == ("10.0.0.0/8", "images.internal")
    policy = FetchPolicy.from_settings(Settings(max_image_bytes=1234))
    assert policy.max_bytes == 1234 and policy.allow == ()
    mixed = FetchPolicy(allow=("10.0.0.0/8", "[fd00::]/8", "Images.Internal."))
    assert [str(n) for n in mixed.allowed_networks] == ["10.0.0.0/8", "fd00::/8"]
    assert mixed.allowed_hosts == frozenset({"images.internal"})


def test_fetch_errors_carry_a_gateway_code() -> None:
    """Until errors.py lists the fetch codes they travel as bad_image; byte caps are too_large."""
    assert FetchError(TOO_LARGE, "x").code is ErrorCode.TOO_LARGE
    assert FetchError(BAD_IMAGE, "x").code is ErrorCode.BAD_IMAGE
    code = FetchError(FORBIDDEN_URL, "x").code
    assert code.value in {FORBIDDEN_URL, "bad_image"}


# ---- fetching ----------------------------------------------------------------------------------


def test_fetches_an_image_from_an_allowed_server(loopback: LoopbackServer) -> None:
    """An allow-listed loopback server's image comes back byte for byte."""
    assert fetch_image_bytes(loopback.url("/png"), LOOPBACK) == PNG


def test_octet_stream_with_image_bytes_is_accepted(loopback: LoopbackServer) -> None:
    """application/octet-stream is accepted when the bytes are an image."""
    assert fetch_image_bytes(loopback.url("/octet"), LOOPBACK) == PNG


def test_loopback_refused_without_allow_list(loopback: LoopbackServer) -> None:
    """The same URL is refused under the default policy."""
    assert reason_of(lambda: fetch_image_bytes(loopback.url("/png"), FetchPolicy())) == FORBIDDEN_URL


def test_relative_redirect_is_followed(loopback: LoopbackServer) -> None:
    """A redirect is followed (relative Location resolved against the current URL)."""
    assert fetch_image_bytes(loopback.url("/relative"), LOOPBACK) == PNG


def test_redirect_to_internal_address_is_refused(loopback: LoopbackServer) -> None:
    """Each hop is re-checked: an allowed host redirecting to a non-allowed address is refused."""
    policy = FetchPolicy(allow=("localhost",), total_timeout_s=5.0)
    assert fetch_image_bytes(loopback.url("/png", host="localhost"), policy) == PNG  # the first hop is fine
    assert reason_of(lambda: fetch_image_bytes(loopback.url("/to-loopback", host="localhost"), policy)) == FORBIDDEN_URL


def test_redirect_to_other_scheme_is_refused(loopback: LoopbackServer) -> None:
    """A redirect to file:// is refused like a URL that named it."""
    assert reason_of(lambda: fetch_image_bytes(loopback.url("/to-file"), LOOPBACK)) == FORBIDDEN_URL


def test_redirect_limit(loopback: LoopbackServer) -> None:
    """A redirect loop ends after max_redirects hops."""
    before = len(loopback.host_headers)
    assert reason_of(lambda: fetch_image_bytes(loopback.url("/loop"), LOOPBACK)) == FETCH_FAILED
    assert len(loopback.host_headers) - before == LOOPBACK.max_redirects + 1


def test_declared_length_over_cap_is_refused_before_the_body(loopback: LoopbackServer) -> None:
    """A Content-Length over the cap is refused on its headers: the server sends no body before the fetch's
    deadline, so a fetcher that waited for the body would fail on the deadline, not as too large."""
    assert reason_of(lambda: fetch_image_bytes(loopback.url("/huge-declared"), LOOPBACK)) == TOO_LARGE


def test_streamed_body_over_cap_is_cut_off(loopback: LoopbackServer) -> None:
    """A body with no length is counted as it streams and cut off past the cap."""
    policy = FetchPolicy(allow=("127.0.0.0/8",), max_bytes=256 * 1024)
    assert reason_of(lambda: fetch_image_bytes(loopback.url("/huge-streamed"), policy)) == TOO_LARGE


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_slow_drip_is_cut_off_at_the_total_deadline(loopback: LoopbackServer, path: str) -> None:
    """A server sending a byte every 50 ms never trips the read timeout but meets the total deadline:
    the fetch gives up while the server is still dripping, not at the end of the drip."""
    policy = FetchPolicy(allow=("127.0.0.0/8",), total_timeout_s=1.0, read_timeout_s=5.0)
    request = f"{path}?deadline"
    assert reason_of(lambda: fetch_image_bytes(loopback.url(request), policy)) == FETCH_FAILED
    assert DRIPPED[request] < DRIP_BYTES


def test_non_image_content_type_is_refused(loopback: LoopbackServer) -> None:
    """text/html is not an image."""
    assert reason_of(lambda: fetch_image_bytes(loopback.url("/html"), LOOPBACK)) == BAD_IMAGE


def test_image_content_type_with_other_bytes_is_refused(loopback: LoopbackServer) -> None:
    """The magic bytes must be JPEG, PNG, GIF or WebP whatever the Content-Type claims."""
    assert reason_of(lambda: fetch_image_bytes(loopback.url("/liar"), LOOPBACK)) == BAD_IMAGE


def test_http_error_status_fails(loopback: LoopbackServer) -> None:
    """A 404 is a fetch failure."""
    assert reason_of(lambda: fetch_image_bytes(loopback.url("/missing"), LOOPBACK)) == FETCH_FAILED


def test_connection_refused_fails() -> None:
    """Nobody listening is a fetch failure."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert reason_of(lambda: fetch_image_bytes(f"http://127.0.0.1:{port}/a.png", LOOPBACK)) == FETCH_FAILED


def test_connection_is_pinned_to_the_checked_address(loopback: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the guard's answer is the address used, though a second lookup would say otherwise;
    the Host header keeps the URL's name."""
    checked = (ipaddress.ip_address("127.0.0.1"),)
    monkeypatch.setattr(url_guard, "resolve_host", lambda host, port: checked)
    real_getaddrinfo = socket.getaddrinfo

    def rebound(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.invalid":  # what an attacker's DNS would answer the second time
            return real_getaddrinfo("10.255.255.1", *args, **kwargs)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebound)
    policy = FetchPolicy(allow=("127.0.0.0/8",), connect_timeout_s=1.0, total_timeout_s=3.0)
    assert fetch_image_bytes(loopback.url("/png", host="rebind.invalid"), policy) == PNG
    assert loopback.host_headers[-1] == f"rebind.invalid:{loopback.port}"


# ---- HTTPS: pinning keeps SNI and the certificate check ----------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf certificate for `name`: (ca.pem, leaf.pem, leaf.key)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Test CA",
        *ca_ext,
        cwd=directory,
    )
    _openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={name}", cwd=directory)
    (directory / "leaf.ext").write_text(
        f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    _openssl(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext", cwd=directory,
    )  # fmt: skip
    return directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"


@pytest.fixture
def tls_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[LoopbackServer, Path, list[str]]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    ca, leaf, key = _make_pki(tmp_path, request.param)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf, key)
    sni: list[str] = []

    def record_sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        sni.append(name or "")

    context.sni_callback = record_sni
    server = LoopbackServer(HANDLERS, tls=context)
    yield server, ca, sni
    server.close()


@pytest.mark.parametrize("tls_server", ["images.test"], indirect=True)
def test_https_pinned_connection_keeps_sni_and_verifies_the_name(
    tls_server: tuple[LoopbackServer, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTPS the pinned connection still sends the URL's name as SNI and checks the certificate for it."""
    server, ca, sni = tls_server
    monkeypatch.setattr(url_guard, "resolve_host", lambda host, port: (ipaddress.ip_address("127.0.0.1"),))
    policy = FetchPolicy(allow=("images.test",), ca_bundle=str(ca), total_timeout_s=5.0)
    assert fetch_image_bytes(server.url("/png", host="images.test"), policy) == PNG
    assert sni[-1] == "images.test"


@pytest.mark.parametrize("tls_server", ["other.test"], indirect=True)
def test_https_certificate_for_another_name_is_refused(
    tls_server: tuple[LoopbackServer, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate that does not name the URL's host fails, pinning or not."""
    server, ca, _ = tls_server
    monkeypatch.setattr(url_guard, "resolve_host", lambda host, port: (ipaddress.ip_address("127.0.0.1"),))
    policy = FetchPolicy(allow=("images.test",), ca_bundle=str(ca), total_timeout_s=5.0)
    assert reason_of(lambda: fetch_image_bytes(server.url("/png", host="images.test"), policy)) == FETCH_FAILED


# ---- data: URIs --------------------------------------------------------------------------------


def test_data_uri_decodes() -> None:
    """A base64 data: URI gives its bytes, through the same entry point as http(s) URLs."""
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert data_url_bytes(url, 1 << 20) == PNG
    assert image_url_bytes(url, FetchPolicy()) == PNG


@pytest.mark.parametrize(
    "url,reason",
    [
        ("data:image/png;base64,not*base64!", BAD_IMAGE),
        ("data:text/plain;base64,aGVsbG8=", BAD_IMAGE),
        ("data:image/png;base64", BAD_IMAGE),
        ("data:image/png;base64," + "A" * 4000, TOO_LARGE),
    ],
)
def test_bad_data_uris_are_refused(url: str, reason: str) -> None:
    """Bad base64, a non-image media type, no payload, or a payload over the cap."""
    assert reason_of(lambda: data_url_bytes(url, 1000)) == reason


def test_image_url_bytes_refuses_other_schemes() -> None:
    """Neither data: nor http(s): refused before any I/O."""
    assert reason_of(lambda: image_url_bytes("file:///etc/passwd", FetchPolicy())) == FORBIDDEN_URL
