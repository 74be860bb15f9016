"""The vendored browser libraries: the committed files match their pinned checksums, the page loads
nothing from elsewhere, and @msgpack/msgpack as the page uses it speaks msgpack-python's dialect."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from playwright.sync_api import Page, Route, sync_playwright

from tests.e2e.test_web import launch_chromium

ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = ROOT / "web"
ORIGIN = "http://codec.test"  # answered by the route below; nothing goes to the network
NON_ASCII = "héllo wörld · ключ · 你好 · こんにちは · 😀🚀"
FRAMES: list[dict[str, Any]] = [
    {
        "type": "turn",
        "id": "t1",
        "text": NON_ASCII,
        "images": [b"\x89PNG\r\n\x1a\n", bytes(range(256)) * 300],
        "options": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 4000, "stop": ["\n"], "seed": 2**53 - 1},
    },
    {
        "type": "done",
        "id": "t1",
        "finish_reason": "cancelled",
        "text": NON_ASCII,
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        "timing": {"ttft_ms": 12.5, "total_ms": 40.25, "tokens_per_s": 74.5},
    },
    {
        "type": "history",
        "system": None,
        "id": None,
        "turns": [{"role": "user", "text": "hi", "images": [{"format": "png", "data": b"\x89PNG"}], "partial": False}],
    },
]


def test_vendored_files_match_the_manifest() -> None:
    """scripts/vendor-web (offline) finds every vendored file with its pinned sha256."""
    result = subprocess.run([str(ROOT / "scripts" / "vendor-web")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "vendored files match" in result.stdout


def test_the_page_loads_only_its_own_files() -> None:
    """No CDN: every script, stylesheet and icon in index.html is a relative path on this server."""
    html = (WEB_DIR / "index.html").read_text()
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(not re.match(r"^(https?:)?//", url) for url in urls), urls


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page()
        page.route(f"{ORIGIN}/**", _serve_web_dir)
        page.goto(f"{ORIGIN}/index.html")
        page.evaluate("async () => { window.codec = await import('/codec.js'); }")
        yield page
        browser.close()


def _serve_web_dir(route: Route) -> None:
    name = route.request.url.removeprefix(ORIGIN + "/")
    if name == "index.html":  # the vendored codec alone, without the chat app
        body = '<!doctype html><title>codec</title><script src="vendor/msgpack.min.js"></script>'
        route.fulfill(body=body, content_type="text/html")
    else:
        route.fulfill(path=WEB_DIR / name, content_type="text/javascript")


TO_HEX = "(bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')"
FROM_HEX = "(hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16))"


@pytest.mark.parametrize("frame", FRAMES, ids=[f["type"] for f in FRAMES])
def test_frames_round_trip_between_the_page_and_msgpack_python(page: Page, frame: dict[str, Any]) -> None:
    """msgpack-python's bytes decode in the page (bin as Uint8Array) and the page's encoding reads back equal."""
    packed = msgpack.packb(frame, use_bin_type=True)
    reencoded = page.evaluate(f"(hex) => ({TO_HEX})(codec.encode(codec.decode(({FROM_HEX})(hex))))", packed.hex())
    assert msgpack.unpackb(bytes.fromhex(reencoded), raw=False) == frame


def test_undefined_fields_are_left_out_and_bytes_are_bin(page: Page) -> None:
    """The page builds frames with optional fields left undefined; they are omitted, and bytes travel as bin."""
    hex_data = page.evaluate(
        f"() => ({TO_HEX})(codec.encode({{type: 'turn', id: 't', images: undefined, data: new Uint8Array([1, 2])}}))"
    )
    data = bytes.fromhex(hex_data)
    assert msgpack.unpackb(data, raw=False) == {"type": "turn", "id": "t", "data": b"\x01\x02"}
    assert b"\xc4\x02\x01\x02" in data  # bin 8, not an array of ints


def test_malformed_bytes_raise(page: Page) -> None:
    """Truncated or trailing bytes are an error, not a value."""
    for hex_data in ["cd01", "a3616263ff"]:
        error = page.evaluate(
            f"(hex) => {{ try {{ codec.decode(({FROM_HEX})(hex)); return null; }} catch (e) {{ return e.message; }} }}", hex_data
        )
        assert error, hex_data
