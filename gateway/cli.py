"""Command line: `gateway serve` runs the server, `gateway demo-model DIR` writes the demo model."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import Settings
from gateway.engine.types import Engine


def build_engine(settings: Settings) -> Engine:
    """Load the configured model (or the cached demo model) and wrap it in the local engine."""
    from gateway.engine.demo import cached_demo_model
    from gateway.engine.loader import load_model
    from gateway.engine.local import LocalEngine
    from gateway.engine.scripted import ScriptedEngine

    if settings.engine == "scripted":
        return ScriptedEngine(queue_size=settings.engine_queue_size)
    if settings.upstreams:
        from gateway.engine.upstream import build_upstream_engine

        return build_upstream_engine(settings)
    path = settings.model or cached_demo_model()
    loaded = load_model(
        path,
        base_model=settings.base_model,
        device=settings.device,
        dtype=settings.dtype,
        trust_remote_code=settings.trust_remote_code,
        model_id=settings.model_id or (None if settings.model else "gateway-demo"),
        adapters=parse_adapters(settings.adapters),
        chat_template=settings.chat_template,
    )
    return LocalEngine(
        loaded,
        queue_size=settings.engine_queue_size,
        context_tokens=settings.context_tokens,
        max_batch=settings.max_batch,
        image_cache_bytes=settings.image_cache_bytes,
        image_workers=settings.image_workers,
        kv_cache_bytes=settings.kv_cache_bytes,
    )


def parse_adapters(text: str) -> dict[str, str]:
    """ "a=/x,b=/y" -> {"a": "/x", "b": "/y"}"""
    adapters: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise SystemExit(f"--adapter wants NAME=DIR, got {item!r}")
        adapters[name.strip()] = directory.strip()
    return adapters


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.server import serve

    overrides = {
        k: v
        for k, v in vars(args).items()
        if k in Settings.__dataclass_fields__ and v is not None and v is not False and k not in ("adapters", "upstreams")
    }
    if args.adapters:
        overrides["adapters"] = ",".join(args.adapters)
    if args.upstreams:
        overrides["upstreams"] = ",".join(args.upstreams)
    settings = Settings.from_env().replace(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, engine_factory=build_engine)
    serve(app, settings)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from gateway.bench import print_report, run_bench, write_report

    report = run_bench(args)
    print_report(report, args.json)
    write_report(report, args.out)
    return 0


def _demo_model(args: argparse.Namespace) -> int:
    from gateway.engine.demo import write_demo_adapter, write_demo_model

    out = Path(args.dir)
    write_demo_model(out / "model", size=args.size)
    write_demo_adapter(out / "model", out / "adapter")
    print(f"model:   {out / 'model'}\nadapter: {out / 'adapter'}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="WebSocket streaming chat gateway for vision-language models")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a model (the built-in demo model by default)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; GATEWAY_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; GATEWAY_PORT)")
    serve.add_argument("--model", help="local model or LoRA adapter directory (default: the demo model)")
    serve.add_argument("--model-id", dest="model_id", help="name clients see (default: the directory name)")
    serve.add_argument("--base-model", dest="base_model", help="base model directory for an adapter")
    serve.add_argument(
        "--adapter",
        dest="adapters",
        action="append",
        metavar="NAME=DIR",
        help="serve a LoRA adapter as model id NAME (repeatable)",
    )
    serve.add_argument(
        "--upstream",
        dest="upstreams",
        action="append",
        metavar="URL",
        help="generate on this OpenAI-compatible server (repeatable)",
    )
    serve.add_argument("--tokenizer", help="local tokenizer directory for exact prompt lengths (default: the upstream's)")
    serve.add_argument("--api-key", dest="api_key", help="require this key (or set GATEWAY_API_KEY)")
    serve.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    serve.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="weights dtype")
    serve.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true", help="run the model repo's own code")
    serve.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--max-batch", dest="max_batch", type=int, help="turns decoding together (default 16)")
    serve.add_argument("--engine", choices=["real", "scripted"], help="scripted: no model, instant replies")
    serve.add_argument("--chat-template", dest="chat_template", help="a Jinja chat template file (default: the model's)")
    serve.add_argument("--data-dir", dest="data_dir", help="the SQLite store's directory (~/.local/share/gateway)")
    serve.add_argument("--session-store", dest="session_store", help="sqlite (default), memory, or a redis:// URL")
    serve.set_defaults(run=_serve)

    bench = commands.add_parser("bench", help="load-test a gateway and compare with raw generate")
    bench.add_argument("--url", help="a running gateway's ws:// URL (default: start one)")
    bench.add_argument("--model", help="model directory for the started gateway and the baselines")
    bench.add_argument("--size", choices=["tiny", "small"], default="small", help="demo model profile (default small)")
    bench.add_argument("--engine", choices=["real", "scripted"], default="real")
    bench.add_argument("--sessions", type=int, default=16)
    bench.add_argument("--turns", type=int, default=2, help="turns per session")
    bench.add_argument("--max-tokens", dest="max_tokens", type=int, default=64)
    bench.add_argument("--prompt-words", dest="prompt_words", type=int, default=48)
    bench.add_argument("--images", type=int, default=0, help="images per turn")
    bench.add_argument(
        "--history", type=int, default=0, help="instead: one conversation of N turns, TTFT by turn with KV reuse and without"
    )
    bench.add_argument("--baseline", action="store_true", help="also measure raw generate, single and static batch")
    bench.add_argument("--direct-url", dest="direct_url", help="also run the load straight to this OpenAI-compatible server")
    bench.add_argument("--port", type=int, default=8765, help="port for the started gateway")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument("--out", help="also write the JSON report to this file")
    bench.set_defaults(run=_bench)

    demo = commands.add_parser("demo-model", help="write the demo model and a LoRA adapter for it to DIR")
    demo.add_argument("dir")
    demo.add_argument("--size", choices=["tiny", "small"], default="tiny")
    demo.set_defaults(run=_demo_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
