"""Command line: `gateway serve` runs the server, `gateway bench` measures one, `gateway demo-model` writes the demo model."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway import __version__, logs, redact
from gateway.config import Settings
from gateway.startup import StartupError, build_engine, check_store, claim_port, parse_adapters, upstream_base_url

log = logging.getLogger("gateway.cli")
DEFAULTS = Settings()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (off, or said in the help)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.server import serve

    settings = _settings(args)
    redact.install(*settings.secrets)  # before the first line is logged
    logs.configure(settings)
    try:
        check_store(settings)
    except StartupError as exc:
        raise SystemExit(f"gateway serve: {exc}") from None
    try:
        listening = claim_port(settings.host, settings.port)
    except StartupError as exc:
        raise SystemExit(f"gateway serve: {exc} (is another server running? pick another with --port)") from None
    try:
        engine = build_engine(settings)
    except StartupError as exc:
        log.debug("the model failed to load", exc_info=exc.__cause__)  # the whole story, at --log-level debug
        raise SystemExit(f"gateway serve: cannot load the model: {exc}") from None
    serve(create_app(settings, engine=engine), settings, listening)
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    """GATEWAY_* variables, overridden by the flags given."""
    flags = {k: v for k, v in vars(args).items() if k in Settings.__dataclass_fields__ and v is not None and v is not False}
    if args.adapters:
        flags["adapters"] = ",".join(f"{name}={directory}" for name, directory in args.adapters)
    if args.upstreams:
        flags["upstreams"] = ",".join(args.upstreams)
    try:
        settings = Settings.from_env().replace(**flags)
        parse_adapters(settings.adapters)
    except ValueError as exc:
        raise SystemExit(f"gateway serve: a GATEWAY_* variable is malformed: {exc}") from None
    if settings.log_format not in logs.FORMATS:
        raise SystemExit(f"gateway serve: GATEWAY_LOG_FORMAT is one of {', '.join(logs.FORMATS)}, not {settings.log_format!r}")
    try:
        upstreams = [upstream_base_url(url) for url in settings.upstreams.split(",") if url.strip()]
    except ValueError as exc:
        raise SystemExit(f"gateway serve: {exc}") from None
    return settings.replace(upstreams=",".join(upstreams))


def _bench(args: argparse.Namespace) -> int:
    from gateway.bench.command import bench

    return bench(args)


def _demo_model(args: argparse.Namespace) -> int:
    from gateway.engine.demo import write_demo_adapter, write_demo_model, write_text_model

    logs.no_progress_bars()  # seconds of work: bars are only noise
    out = Path(args.dir)
    if args.arch == "llama":  # text only, no adapter: the model `gateway bench` compares with vLLM
        print(f"model:   {write_text_model(out / 'model', size=args.size)}")
        return 0
    write_demo_model(out / "model", size=args.size)
    write_demo_adapter(out / "model", out / "adapter")
    print(f"model:   {out / 'model'}\nadapter: {out / 'adapter'}")
    return 0


def _adapter(text: str) -> tuple[str, str]:
    try:
        [(name, directory)] = parse_adapters(text).items()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}") from None
    return name, directory


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _ws_url(text: str) -> str:
    if not text.startswith(("ws://", "wss://")):
        raise argparse.ArgumentTypeError(f"expected a ws:// or wss:// URL such as ws://127.0.0.1:8000/ws, got {text!r}")
    return text


def _setting(name: str, text: str, default: Any = None) -> str:
    """Help for a serve option: what it does, its default and its environment variable."""
    shown = getattr(DEFAULTS, name) if default is None else default
    return f"{text} (default: {shown}; env GATEWAY_{name.upper()})"


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve a model (the built-in demo model by default)", formatter_class=HelpFormatter)
    add = serve.add_argument
    add("--host", help=_setting("host", "address to bind"))
    add("--port", type=_port, help=_setting("port", "port to listen on"))
    add("--model", help=_setting("model", "local model or LoRA adapter directory", "the demo model"))
    add(
        "--model-id",
        dest="model_id",
        help=_setting(
            "model_id",
            "the model name clients see",
            "the directory's name; gateway-demo for the demo; BASE:ADAPTER for an adapter",
        ),
    )
    add(
        "--base-model", dest="base_model", help=_setting("base_model", "base model directory for an adapter", "the adapter's own")
    )
    add(
        "--adapter",
        dest="adapters",
        action="append",
        type=_adapter,
        metavar="NAME=DIR",
        help=_setting("adapters", "also serve a LoRA adapter as model id NAME, repeatable", "none"),
    )
    add(
        "--upstream",
        dest="upstreams",
        action="append",
        metavar="URL",
        help=_setting("upstreams", "generate on this OpenAI-compatible server, repeatable", "none: a local model"),
    )
    add("--tokenizer", help=_setting("tokenizer", "local tokenizer directory for exact prompt lengths", "the upstream's"))
    add("--api-key", dest="api_key", help=_setting("api_key", "require this key on HTTP and WebSocket", "none"))
    add("--token-secret", dest="token_secret", help=_setting("token_secret", "sign and accept scoped tokens", "off"))
    add("--admin-key", dest="admin_key", help=_setting("admin_key", "require this key to load adapters", "the API key"))
    add("--max-adapters", dest="max_adapters", type=_at_least(0), help=_setting("max_adapters", "LoRA adapters served at once"))
    add("--device", help=_setting("device", "torch device: cpu, cuda, cuda:N", "cuda when available, else cpu"))
    add(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help=_setting("dtype", "weights dtype", "bf16/fp16 on GPU, fp32 on CPU"),
    )
    add("--trust-remote-code", dest="trust_remote_code", action="store_true", help="run the model repository's own Python code")
    add(
        "--log-level",
        dest="log_level",
        choices=["debug", "info", "warning", "error"],
        help=_setting("log_level", "logging level"),
    )
    add(
        "--log-format",
        dest="log_format",
        choices=list(logs.FORMATS),
        help=_setting("log_format", "json: one JSON object a line (ts, level, logger, message, fields)"),
    )
    batch_help = _setting("max_batch", "turns decoding together in one forward pass")
    add("--max-batch", dest="max_batch", type=_at_least(1), help=batch_help)
    add("--chat-template", dest="chat_template", help=_setting("chat_template", "a Jinja chat template file", "the model's"))
    add("--engine", choices=["real", "scripted"], help=_setting("engine", "scripted: no model, instant replies"))
    add(
        "--otlp-traces-endpoint",
        dest="otlp_traces_endpoint",
        metavar="URL",
        help=_setting("otlp_traces_endpoint", "send OpenTelemetry traces to this OTLP/HTTP URL (the otel extra)", "off"),
    )
    add(
        "--data-dir", dest="data_dir", help=_setting("data_dir", "the SQLite session store's directory", "~/.local/share/gateway")
    )
    add("--session-store", dest="session_store", help=_setting("session_store", "sqlite, memory, or a redis:// URL"))
    add(
        "--allow-volatile-sessions",
        dest="allow_volatile_sessions",
        action="store_true",
        help="serve even when the session store cannot open at start (sessions then are not durable until it works)",
    )
    serve.set_defaults(run=_serve)


def _add_bench(commands: Any) -> None:
    bench = commands.add_parser(
        "bench", help="load-test a gateway and compare it with raw generate", formatter_class=HelpFormatter
    )
    add = bench.add_argument
    add("--url", type=_ws_url, help="a running gateway's ws:// URL (default: start one here)")
    add("--model", help="model directory, or a directory `gateway demo-model` wrote (default: the demo model of --size)")
    add("--size", choices=["tiny", "small"], default="small", help="demo model profile when no --model is given")
    add("--engine", choices=["real", "scripted"], default="real", help="scripted: no model, to measure the WebSocket layer")
    add("--sessions", type=_at_least(1), help="concurrent sessions (default: 16; with --history, 1)")
    add("--turns", type=_at_least(1), default=2, help="turns per session")
    add("--max-tokens", dest="max_tokens", type=_at_least(1), default=64, help="tokens generated per turn")
    add("--prompt-words", dest="prompt_words", type=_at_least(1), default=48, help="words in each prompt")
    add("--images", type=_at_least(0), default=0, help="images per turn")
    add(
        "--history",
        type=_at_least(0),
        default=0,
        help="instead: --sessions conversations of N turns at once, time to first token by turn and tokens/s, with KV "
        "reuse and without (0: off)",
    )
    add(
        "--context-tokens",
        dest="context_tokens",
        type=_at_least(1),
        help="with --history: trim each conversation to this window, with trim_headroom and without (default: no trimming)",
    )
    add("--direct-url", dest="direct_url", help="also run the load straight to this OpenAI-compatible server (default: off)")
    add("--rounds", type=_at_least(1), default=3, help="with --direct-url: gateway and direct loads alternated this many times")
    add(
        "--gateway-cpus",
        dest="gateway_cpus",
        type=lambda text: {int(cpu) for cpu in text.split(",")},
        help="run the gateway started here on these CPUs (e.g. 0, as `taskset -c 0` runs the upstream) and the load "
        "on the others (default: anywhere)",
    )
    add(
        "--live",
        action="store_true",
        help="instead: sessions streaming 2 frames/s of 640x480 JPEG, asking a live and a text question every 5 s",
    )
    add("--seconds", type=_at_least(1), default=30, help="with --live: how long each session streams")
    add("--baseline", action="store_true", help="also measure raw transformers generate: one stream, one static batch")
    add("--port", type=_port, default=8765, help="port for the gateway started here")
    add("--json", action="store_true", help="print the report as JSON")
    add("--out", help="also write the JSON report to this file (default: print only)")
    add(
        "--plot",
        metavar="FILE",
        help="also draw the results into FILE.png or FILE.svg: tokens/s by session count, or with --history time to "
        "first token by turn with and without KV reuse; needs the plot extra (default: no chart)",
    )
    bench.set_defaults(run=_bench)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="WebSocket streaming chat gateway for vision-language models")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_bench(commands)
    demo = commands.add_parser(
        "demo-model", help="write the demo model and a LoRA adapter for it under DIR", formatter_class=HelpFormatter
    )
    demo.add_argument("dir", metavar="DIR", help="where to write DIR/model and DIR/adapter")
    demo.add_argument(
        "--size",
        choices=["tiny", "small"],
        default="tiny",
        help="tiny: ~0.2M parameters, instant; small: ~31M (llama: 27.6M), so compute dominates",
    )
    demo.add_argument(
        "--arch",
        choices=["glm4v", "llama"],
        default="glm4v",
        help="glm4v: the vision demo with a LoRA adapter; llama: a text-only Llama vLLM can serve too, for bench --direct-url",
    )
    demo.set_defaults(run=_demo_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
