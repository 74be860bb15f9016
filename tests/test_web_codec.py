"""web/msgpack.js, run in headless Chromium, against msgpack-python in both directions."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from playwright.sync_api import Page, Route, sync_playwright

from tests.test_web import launch_chromium

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
ORIGIN = "http://codec.test"  # answered by the route below; nothing goes to the network
SAFE = 2**53 - 1

NON_ASCII = "héllo wörld · ключ · 你好 · こんにちは · 😀🚀"
# Values of every type the protocol uses, at each format's size boundaries. No integral floats here:
# JavaScript has one number type, so 2.0 is the integer 2 to it and encodes as an int.
INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, SAFE, SAFE + 1, 2**63, 2**64 - 1]
NEGATIVE_INTS = [-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -SAFE, -SAFE - 1, -(2**63)]
FLOATS = [1.5, -2.25, 0.1, 1e300, 5e-324, -0.0, math.inf, -math.inf, math.nan]
TEXTS = ["", "hello", NON_ASCII, "é" * 15, "é" * 16, "é" * 127, "é" * 128, "é" * 32767, "é" * 32768]
BINARIES = [b"", bytes([0, 1, 127, 128, 255]), bytes(range(256)), b"\x07" * 70000]
CONTAINERS = [
    [],
    [1, "two", None, [3.5, [True]]],
    list(range(16)),
    [1] * 70000,
    {},
    {"a": 1, NON_ASCII: NON_ASCII, "nested": {"list": [1, -1], "bin": b"\x01"}},
    {f"k{i}": i for i in range(16)},
]
FRAMES = [
    {
        "type": "turn",
        "id": "t1",
        "text": NON_ASCII,
        "images": [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"],
        "options": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 4000, "stop": ["\n"], "seed": 2**63 - 1},
    },
    {
        "type": "done",
        "id": "t1",
        "finish_reason": "cancelled",
        "text": NON_ASCII,
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        "timing": {"ttft_ms": 12.5, "total_ms": 40.25, "tokens_per_s": 74.5},
    },
    {"type": "history", "system": None, "turns": [{"role": "user", "text": "hi", "images": [{"data": b"\x89PNG"}]}]},
]
VALUES: list[Any] = [None, True, False, *INTS, *NEGATIVE_INTS, *FLOATS, *TEXTS, *BINARIES, *CONTAINERS, *FRAMES]

# JavaScript spellings with no Python literal of their own: (expression, what msgpack-python reads).
JS_ONLY: list[tuple[str, Any]] = [
    ("12n", 12),  # a small BigInt takes the smallest int format
    ("new Uint8Array([9, 8]).buffer", b"\x09\x08"),
    ('new Map([["x", 1], ["y", [2]]])', {"x": 1, "y": [2]}),
    ('({type: "ping", id: undefined})', {"type": "ping"}),  # undefined fields are left out
    ("new Uint8Array(300).subarray(10, 13)", b"\x00\x00\x00"),  # a view encodes only its own bytes
]


def js_literal(value: Any) -> str:
    """The JavaScript expression for a Python value, as a page would build it."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if abs(value) <= SAFE else f"{value}n"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bytes):
        return f'fromHex("{value.hex()}")'
    if isinstance(value, list):
        return "[" + ", ".join(map(js_literal, value)) + "]"
    return "({" + ", ".join(f"{json.dumps(k)}: {js_literal(v)}" for k, v in value.items()) + "})"


def value_id(value: Any) -> str:
    return repr(value)[:40]


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page()
        page.route(f"{ORIGIN}/**", _serve_web_dir)
        page.goto(f"{ORIGIN}/index.html")
        page.evaluate(HELPERS)
        yield page
        browser.close()


def _serve_web_dir(route: Route) -> None:
    name = route.request.url.removeprefix(ORIGIN + "/")
    if name == "index.html":  # an empty page: the codec is imported alone, without the chat app
        route.fulfill(body="<!doctype html><title>codec</title>", content_type="text/html")
    else:
        route.fulfill(path=WEB_DIR / name, content_type="text/javascript")


HELPERS = """async () => {
  window.codec = await import("/msgpack.js");
  window.toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  window.fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
  // JSON cannot tell BigInt, bytes or non-finite floats apart, so those come back tagged.
  window.describe = (v) => {
    if (typeof v === "bigint") return { bigint: v.toString() };
    if (Object.is(v, -0)) return { float: "-0" };
    if (typeof v === "number" && !Number.isFinite(v)) return { float: String(v) };
    if (v instanceof Uint8Array) return { bin: toHex(v) };
    if (Array.isArray(v)) return v.map(describe);
    if (v !== null && typeof v === "object") return { map: Object.entries(v).map(([k, x]) => [k, describe(x)]) };
    return v;
  };
}"""


def describe(value: Any) -> Any:
    """What `describe` in the page should report for a value decoded from msgpack."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= SAFE else {"bigint": str(value)}
    if isinstance(value, float):
        if math.isnan(value):
            return {"float": "NaN"}
        if math.isinf(value):
            return {"float": "Infinity" if value > 0 else "-Infinity"}
        return {"float": "-0"} if value == 0 and math.copysign(1, value) < 0 else value
    if isinstance(value, bytes):
        return {"bin": value.hex()}
    if isinstance(value, list):
        return [describe(v) for v in value]
    return {"map": [[k, describe(v)] for k, v in value.items()]}


def same(a: Any, b: Any) -> bool:
    """Equality that also holds for NaN and tells -0.0 from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("value", VALUES, ids=value_id)
def test_js_encodes_the_bytes_msgpack_python_does(page: Page, value: Any) -> None:
    """JS picks the same (smallest) formats as msgpack-python, so the bytes match and decode to the value."""
    encoded = bytes.fromhex(page.evaluate(f"() => toHex(codec.encode({js_literal(value)}))"))
    assert encoded == msgpack.packb(value, use_bin_type=True)
    assert same(msgpack.unpackb(encoded, raw=False), value)


@pytest.mark.parametrize(("expression", "expected"), JS_ONLY, ids=[e for e, _ in JS_ONLY])
def test_js_only_values_encode_as_msgpack_python_reads_them(page: Page, expression: str, expected: Any) -> None:
    """BigInt, ArrayBuffer, Map, typed-array views and undefined fields encode as their msgpack equivalents."""
    encoded = bytes.fromhex(page.evaluate(f"() => toHex(codec.encode({expression}))"))
    assert same(msgpack.unpackb(encoded, raw=False), expected)


@pytest.mark.parametrize("value", VALUES, ids=value_id)
def test_js_decodes_msgpack_python_and_encodes_it_back(page: Page, value: Any) -> None:
    """JS decodes msgpack-python's bytes to the right JS types, and its encoding reads back unchanged."""
    packed = msgpack.packb(value, use_bin_type=True)
    described, reencoded = page.evaluate(
        "(hex) => { const v = codec.decode(fromHex(hex)); return [describe(v), toHex(codec.encode(v))]; }", packed.hex()
    )
    assert described == describe(value)
    assert same(msgpack.unpackb(bytes.fromhex(reencoded), raw=False), value)


def test_js_decodes_float32(page: Page) -> None:
    """Single-precision floats (0xca), which msgspec never sends but msgpack allows, decode too."""
    packed = msgpack.packb(0.15625, use_single_float=True)
    assert packed[0] == 0xCA
    assert page.evaluate("(hex) => codec.decode(fromHex(hex))", packed.hex()) == 0.15625


@pytest.mark.parametrize(
    ("hex_data", "message"),
    [
        ("", "truncated"),
        ("cd01", "truncated"),  # uint16 with one byte
        ("a3616263ff", "extra bytes"),
        ("d60100000000", "unsupported msgpack type 0xd6"),  # fixext: never part of the protocol
        ("c1", "unsupported msgpack type 0xc1"),
        ("a2c328", "invalid UTF-8"),
        ("81c0c0", "map keys must be strings"),
        ("8101c0", "map keys must be strings"),
    ],
)
def test_js_rejects_malformed_data(page: Page, hex_data: str, message: str) -> None:
    """Malformed input raises an error instead of producing a value."""
    error = page.evaluate(
        "(hex) => { try { codec.decode(fromHex(hex)); return null; } catch (e) { return e.message; } }", hex_data
    )
    assert error is not None and message in error


def test_js_refuses_to_encode_ints_beyond_64_bits(page: Page) -> None:
    """BigInts msgpack cannot hold are an error, not a silently wrapped number."""
    error = page.evaluate("() => { try { codec.encode(2n ** 64n); return null; } catch (e) { return e.message; } }")
    assert error is not None and "64 bits" in error
