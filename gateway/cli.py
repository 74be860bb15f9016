"""Command line: `gateway serve` runs the server, `gateway demo-model DIR` writes the demo model."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from gateway.config import Settings
from gateway.engine.types import Engine


def build_engine(settings: Settings) -> Engine:
    """Load the configured model (or the cached demo model) and wrap it in the local engine."""
    from gateway.engine.demo import cached_demo_model
    from gateway.engine.loader import load_model
    from gateway.engine.local import LocalEngine

    path = settings.model or cached_demo_model()
    loaded = load_model(
        path,
        base_model=settings.base_model,
        device=settings.device,
        dtype=settings.dtype,
        trust_remote_code=settings.trust_remote_code,
        model_id=settings.model_id or (None if settings.model else "gateway-demo"),
    )
    return LocalEngine(loaded, queue_size=settings.engine_queue_size, context_tokens=settings.context_tokens)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    overrides = {
        k: v
        for k, v in vars(args).items()
        if k in Settings.__dataclass_fields__ and v is not None and v is not False
    }
    settings = Settings.from_env().replace(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, engine_factory=build_engine)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ws_max_size=settings.max_frame_bytes,
        ws_max_queue=4,  # a client that floods frames waits on TCP, not on our memory
        timeout_graceful_shutdown=10,
    )
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
    serve.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    serve.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="weights dtype")
    serve.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true", help="run the model repo's own code")
    serve.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)

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
