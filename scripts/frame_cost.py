"""Measure the event-loop CPU a big inbound frame costs: decoding it (JSON and msgpack) and inflating it
(permessage-deflate), per MB, in this process, for each given source tree.

    .venv/bin/python scripts/frame_cost.py [--mb 15] [--source TREE ...]

Each tree runs in a subprocess of its own (PYTHONPATH=TREE) on the same frames, so compare the figures of
one invocation. CPU time is `time.thread_time()`: what the loop's thread itself spends."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import string
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 3


def schema_of(mb: float) -> dict[str, Any]:
    """A schema of small random values (short strings and integers), about `mb` MB as JSON, in containers
    msgpack frames may carry (1,024 items)."""
    rng = random.Random(20)
    rows = max(1, int(mb * 1e6 / 8_000))  # a row of 1,000 values is about 8 kB of JSON

    def value(i: int) -> Any:
        return rng.randrange(10**6) if i % 2 else "".join(rng.choices(string.ascii_lowercase, k=6))

    row_list = [[value(i) for i in range(1000)] for _ in range(rows)]
    return {"enum": [row_list[i : i + 1000] for i in range(0, rows, 1000)]}


def frame_of(mb: float) -> dict[str, Any]:
    schema = schema_of(mb)
    response_format = {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}
    return {"type": "turn", "id": "t", "text": "hi", "options": {"response_format": response_format}}


def best_ms(work: Any) -> float:
    """The least thread CPU of REPEATS runs (a refused frame counts: refusing is the work)."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.thread_time()
        try:
            work()
        except Exception:  # a refusal costs what it costs
            pass
        best = min(best, (time.thread_time() - start) * 1000)
    return best


def _first(*modules: str) -> str:
    """The module's path in the tree measured: the layout of issue 22, else the flat one before it."""
    for module in modules:
        try:
            if importlib.util.find_spec(module) is not None:
                return module
        except ModuleNotFoundError:  # its parent is a module there, not a package
            pass
    raise SystemExit(f"none of {modules} in this tree")


def measure(mb: float) -> dict[str, float]:
    """In the tree on sys.path: decode a JSON text frame and a msgpack frame, and inflate a compressed one."""
    import msgpack

    protocol = importlib.import_module(_first("gateway.ws.protocol", "gateway.protocol"))

    frame = frame_of(mb)
    text, packed = json.dumps(frame, separators=(",", ":")), msgpack.packb(frame)
    figures = {"json_mb": len(text) / 1e6, "msgpack_mb": len(packed) / 1e6}
    figures["json_ms"] = best_ms(lambda: protocol.decode(text))
    figures["msgpack_ms"] = best_ms(lambda: protocol.decode(packed))
    figures["msgpack_slice_ms"] = slowest_step_ms(protocol, packed)
    figures["inflate_ms"] = inflate_ms(text.encode())
    return figures


def slowest_step_ms(protocol: Any, packed: bytes) -> float:
    """The most thread CPU one event-loop callback spends decoding the frame: all of it where the tree
    decodes in one call, else its slowest step (decode_steps yields to the loop between steps)."""
    if not hasattr(protocol, "decode_steps"):
        return best_ms(lambda: protocol.decode(packed))
    best = float("inf")
    for _ in range(REPEATS):
        steps, slowest = protocol.decode_steps(packed), 0.0
        while True:
            start = time.thread_time()
            try:
                next(steps)
            except Exception:  # StopIteration (decoded) or a refusal: either ends the frame's work
                slowest = max(slowest, time.thread_time() - start)
                break
            slowest = max(slowest, time.thread_time() - start)
        best = min(best, slowest * 1000)
    return best


def inflate_ms(payload: bytes) -> float:
    """The server's permessage-deflate decoder on one compressed message of `payload`."""
    from websockets.extensions.permessage_deflate import PerMessageDeflate
    from websockets.frames import TEXT, Frame

    ws_deflate = importlib.import_module(_first("gateway.ws.deflate", "gateway.ws_deflate"))

    compressor = zlib.compressobj(wbits=-12)
    compressed = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    frame = Frame(TEXT, compressed[:-4], rsv1=True)
    decoder_type = getattr(ws_deflate, "SkipLargeMessages", PerMessageDeflate)

    from gateway.config import Settings

    def inflate() -> None:
        decoder = decoder_type(False, False, 12, 12, {"memLevel": 5})
        # the server's bound on compressed messages, where the tree has one (refused past it: 1009)
        decoder.max_inflated = getattr(Settings(), "max_compressed_frame_bytes", None)
        decoder.decode(frame, max_size=16 * 1024 * 1024)

    return best_ms(inflate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=15.0)
    parser.add_argument("--source", action="append", default=[], help="a source tree (default: this one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.mb)))
        return
    for source in args.source or [str(ROOT)]:
        env = {**os.environ, "PYTHONPATH": source}
        command = [sys.executable, __file__, "--child", "--mb", str(args.mb)]
        out = subprocess.run(command, env=env, cwd=source, check=True, capture_output=True, text=True).stdout
        f = json.loads(out)
        print(
            f"{source}: JSON {f['json_mb']:.1f} MB {f['json_ms']:.0f} ms ({f['json_ms'] / f['json_mb']:.1f} ms/MB); "
            f"msgpack {f['msgpack_mb']:.1f} MB {f['msgpack_ms']:.0f} ms ({f['msgpack_ms'] / f['msgpack_mb']:.1f} ms/MB), "
            f"{f['msgpack_slice_ms']:.0f} ms in one loop callback; "
            f"inflate {f['inflate_ms']:.0f} ms ({f['inflate_ms'] / f['json_mb']:.1f} ms/MB)"
        )


if __name__ == "__main__":
    main()
